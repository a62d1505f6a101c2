"""The MRL critic: a text-only value model over (saved interaction + next query).

    V(s) = w · LayerNorm( mean_{t real} Encoder(s)_t ) + b

The encoder is a deep copy of the policy's RxT encoder (with its own copy of the shared embedding), so the
critic starts from the supervised encoder's representations and is trained separately; the STM is not an input
(the state is implicit in the interactions, as in IMPO).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from rxt.model import RxT
from rxt.template import pad_batch


class Critic(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, max_len: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.max_len = max_len

    @classmethod
    def from_model(cls, model: RxT) -> Critic:
        """A critic whose encoder is an independent copy of ``model.encoder``."""
        return cls(copy.deepcopy(model.encoder), model.config.dim, model.config.max_seq_len)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """``(B, T)`` ids and mask -> ``(B,)`` values (mean-pooled over the real tokens); ``validate=False`` skips
        the host-side id check (ids checked once already)."""
        return self.value_of(self.encoder(input_ids, attention_mask, validate=validate).last_hidden, attention_mask)

    def value_of(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The value head over the encoder's final states ``hidden`` (B, T, D) (from `forward`, or from a stacked
        pass with the policy's encoder: `training.mrl.impo.policy_value_pass`) -> (B,)."""
        mask = attention_mask.to(hidden.dtype)[..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return self.head(self.norm(pooled)).squeeze(-1)

    def state_inputs(self, saved: Sequence[Sequence[int]], queries: Sequence[Sequence[int]], pad_id: int,
                     device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate each saved interaction with the next query prompt (the saved part is cut from the left
        when the pair is longer than ``max_len``)."""
        rows = []
        for s, q in zip(saved, queries):
            q = list(q)[-self.max_len :]
            keep = self.max_len - len(q)
            rows.append([*(list(s)[-keep:] if keep > 0 else []), *q])
        ids, lengths = pad_batch(rows, pad_id)
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        return ids.to(device), mask.to(device)


__all__ = ["Critic"]
