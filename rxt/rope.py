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
        # Kept in float64 and cast on use, so float64 reference tests see exact tables. Not saved in checkpoints:
        # they are a pure function of the config.
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # Follow device moves but keep the tables in float64 when the model is cast to bf16/fp16: rounding the
        # angles themselves would shift every position. They are cast to the input's dtype on use.
        tables = (self.cos, self.sin)
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float64:
            self.cos, self.sin = (t.to(device=self.cos.device) for t in tables)
        return self

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (B, H, T, d) by ``positions`` (B, T) or (T,)."""
        cos = self.cos[positions].to(x.dtype)  # (B, T, d/2) or (T, d/2)
        sin = self.sin[positions].to(x.dtype)
        if cos.dim() == 3:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        half = self.head_dim // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
