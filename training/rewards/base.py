"""The reward interface for MRL: a reward is any callable ``(RewardInput) -> Tensor`` of shape ``(B,)``.

Rewards are plain callables (functions, dataclasses, ``nn.Module`` if one wants parameters): nothing requires
``nn.Module``. They run under ``torch.no_grad`` (a reward is a scalar signal, not a loss) and return float tensors
on the device of ``generated_ids``.

``RewardInput`` carries one batch of an MRL step, all right-padded token ids with explicit lengths:

* ``generated``: the answer the policy produced for the current query;
* ``reference``: the dataset's answer to that query (optional for rewards that do not need it);
* ``saved``: the interaction that was written to memory earlier in the episode and that the query asks about
  (for the cumulative strategy, the previous interaction; for single-step episodes, the first one);
* ``first``: the episode's first interaction (optional; the long-range strategy asks about it after unrelated
  turns);
* ``embed``: an optional ``(ids, lengths) -> (B, D)`` sentence-embedding function shared by embedding rewards;
* ``generated_texts`` / ``fact_values``: the generated answers as text and, per row, the fact value the query asks
  about (``None`` for a row that asks none, e.g. chitchat or an intermediate turn), for rewards that judge the
  answer's words as the recall metric does (`training.rewards.value`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["EmbedFn", "Reward", "RewardInput"]

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(ids (B, T) long, lengths (B,) long) -> (B, D) float`` sentence embeddings."""


def _check_pair(name: str, ids: torch.Tensor | None, lengths: torch.Tensor | None, batch: int | None) -> None:
    if ids is None:
        if lengths is not None:
            raise ValueError(f"{name}_lengths given without {name}_ids")
        return
    if ids.dim() != 2:
        raise ValueError(f"{name}_ids must be (B, T), got {tuple(ids.shape)}")
    if lengths is None or lengths.shape != (ids.size(0),):
        got = None if lengths is None else tuple(lengths.shape)
        raise ValueError(f"{name}_lengths must be ({ids.size(0)},), got {got}")
    if batch is not None and ids.size(0) != batch:
        raise ValueError(f"{name}_ids has batch {ids.size(0)}, generated_ids has {batch}")


@dataclass
class RewardInput:
    """One batch of generated answers and what they are judged against (see the module docstring)."""

    generated_ids: torch.Tensor
    generated_lengths: torch.Tensor
    reference_ids: torch.Tensor | None = None
    reference_lengths: torch.Tensor | None = None
    saved_ids: torch.Tensor | None = None
    saved_lengths: torch.Tensor | None = None
    first_ids: torch.Tensor | None = None
    first_lengths: torch.Tensor | None = None
    embed: EmbedFn | None = None
    generated_texts: Sequence[str] | None = None
    fact_values: Sequence[str | None] | None = None

    def __post_init__(self) -> None:
        _check_pair("generated", self.generated_ids, self.generated_lengths, None)
        batch = self.generated_ids.size(0)
        _check_pair("reference", self.reference_ids, self.reference_lengths, batch)
        _check_pair("saved", self.saved_ids, self.saved_lengths, batch)
        _check_pair("first", self.first_ids, self.first_lengths, batch)
        for name in ("generated_texts", "fact_values"):
            rows = getattr(self, name)
            if rows is not None and len(rows) != batch:
                raise ValueError(f"{name} has {len(rows)} rows, generated_ids has {batch}")
        if self.fact_values is not None and self.generated_texts is None:
            raise ValueError("fact_values given without generated_texts (the answers they are looked for in)")

    @property
    def batch_size(self) -> int:
        return self.generated_ids.size(0)

    @property
    def device(self) -> torch.device:
        return self.generated_ids.device

    def target(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, lengths)`` of ``"reference"``, ``"saved"`` or ``"first"``; a clear error when it is missing."""
        if which not in ("reference", "saved", "first"):
            raise ValueError(f"unknown target {which!r}")
        ids, lengths = getattr(self, f"{which}_ids"), getattr(self, f"{which}_lengths")
        if ids is None:
            raise ValueError(f"this reward needs {which}_ids in its RewardInput")
        return ids, lengths


@runtime_checkable
class Reward(Protocol):
    """Anything callable as ``reward(inputs) -> (B,)`` float tensor."""

    def __call__(self, inputs: RewardInput) -> torch.Tensor: ...
