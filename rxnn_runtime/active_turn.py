"""A turn while it is being answered: which decode slot it holds, what it has produced so far."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rxnn_runtime.messages import Query
from rxt.sampling import SamplingConfig
from rxt.tokenizer import IncrementalDecoder


@dataclass
class ActiveTurn:
    query: Query
    turn_id: int
    prompt: list[int]
    text_decoder: IncrementalDecoder
    slot: int = -1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generator: torch.Generator | None = None
    stm: torch.Tensor | None = None  # (L, S, D): the committed memory this turn reads
    next_token: int = 0
    answer: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    stopped_by_eos: bool = False

    @property
    def session_id(self) -> str:
        return self.query.session_id
