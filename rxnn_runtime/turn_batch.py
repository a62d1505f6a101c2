"""The turns a `ReactiveModel` is answering right now, decoded together one step per lane action."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from rxnn_runtime.messages import Query
from rxt.generation import DecodeStep
from rxt.tokenizer import IncrementalDecoder


@dataclass
class ActiveTurn:
    query: Query
    turn_id: int
    prompt: list[int]
    text_decoder: IncrementalDecoder
    answer: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    done: bool = False
    cancelled: bool = False
    stopped_by_eos: bool = False

    @property
    def session_id(self) -> str:
        return self.query.session_id


@dataclass
class TurnBatch:
    turns: list[ActiveTurn]
    steps: Iterator[DecodeStep]
    stm: torch.Tensor  # (L, B, S, D): the committed memories the rows read

    @property
    def finished(self) -> bool:
        return all(t.done for t in self.turns)
