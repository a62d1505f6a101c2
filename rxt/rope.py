"""Rotary position embeddings (RoPE).

RoPE rotates each pair of channels of a query or key by an angle proportional to its position, so the dot
product of a rotated query at position m and a rotated key at position n depends only on m - n.

Where it is applied is a property of the attention module (`RopeMode`), because RxT uses three placements:
self-attention rotates queries and keys; memory cross-attention rotates queries only (memory slots are a set,
not a sequence); memory attention rotates keys only (the encoded tokens are the sequence there).
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import nn


class RopeMode(str, Enum):
    """Which side of an attention layer RoPE rotates."""

    NONE = "none"
    FULL = "full"
    QUERY = "query"
    KEY = "key"

    @property
    def rotates_queries(self) -> bool:
        return self in (RopeMode.FULL, RopeMode.QUERY)

    @property
    def rotates_keys(self) -> bool:
        return self in (RopeMode.FULL, RopeMode.KEY)


class RotaryEmbedding(nn.Module):
    """Precomputed cos/sin tables for positions ``0 .. max_seq_len - 1``.

    Uses the "half split" layout: channel i is paired with channel i + d/2.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10_000.0) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"RoPE head_dim={head_dim} must be even")
        if max_seq_len < 1:
            raise ValueError(f"RoPE max_seq_len={max_seq_len} must be >= 1")
        self.head_dim = head_dim
        self.max_seq_len = max_seq_len
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)  # (T, d/2)
        # One (T, 2, d) table per position: [cos | cos] and [-sin | sin] over the d channels, so a rotation reads
        # it with one gather and one cast and is x * cos + rotate_half(x) * sin (6 ops a call instead of 11: it
        # runs twice per attention layer, so this is a few per cent of every training step's launches). Bit for
        # bit the pairwise formula: x1*cos + x2*(-sin) == x1*cos - x2*sin and addition commutes in IEEE.
        # Kept in float64 and cast on use, so float64 reference tests see exact tables. Not saved in checkpoints:
        # they are a pure function of the config.
        cos, sin = angles.cos(), angles.sin()
        table = torch.stack((torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)), dim=1)
        self.register_buffer("table", table, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # Follow device moves but keep the table in float64 when the model is cast to bf16/fp16: rounding the
        # angles themselves would shift every position. It is cast to the input's dtype on use.
        table = self.table
        super()._apply(fn, recurse)
        if self.table.dtype != torch.float64:
            self.table = table.to(device=self.table.device)
        return self

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (B, H, T, d) by ``positions`` (B, T) or (T,)."""
        cos, sin = self.table[positions].to(x.dtype).unbind(-2)  # (B, T, d) or (T, d) each
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        half = self.head_dim // 2
        return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * sin
