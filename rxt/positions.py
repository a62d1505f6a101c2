"""Legacy positional encodings: learned absolute embeddings and T5-style relative position bias.

RoPE (:mod:`rxt.rope`) is the default; these exist for compatibility with older configurations.

Relative bias maths (T5). For a query at position q and a key at position k, let n = q - k (how far back the key
is). Each direction gets B buckets (B = num_buckets, halved when bidirectional; keys after the query use the
upper half). Within a direction, with m = B // 2:
    bucket(|n|) = |n|                                                       if |n| < m   (one bucket per distance)
    bucket(|n|) = min(B - 1, m + floor(log(|n| / m) / log(max_distance / m) * (B - m)))   otherwise
so near distances are resolved exactly and far ones share logarithmically wider buckets; every distance
>= max_distance lands in the last bucket. Unidirectional bias clamps n at 0, so future keys share bucket 0 (a
causal mask is expected to hide them anyway). The bias for head h is a learned scalar per bucket.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LearnedAbsolutePositions(nn.Module):
    """A learned vector per absolute position ``0 .. max_len - 1``."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"LearnedAbsolutePositions max_len={max_len} must be >= 1")
        if dim < 1:
            raise ValueError(f"LearnedAbsolutePositions dim={dim} must be >= 1")
        self.max_len = max_len
        self.dim = dim
        self.embedding = nn.Embedding(max_len, dim)
        # nn.Embedding's N(0, 1) would swamp the token embeddings these are added to; use a small scale instead.
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (B, T) integer -> (B, T, dim). Raises ValueError for a position outside [0, max_len)."""
        if positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
        if positions.numel() > 0:
            lo, hi = int(positions.min()), int(positions.max())
            if lo < 0 or hi >= self.max_len:
                bad = hi if hi >= self.max_len else lo
                raise ValueError(
                    f"position {bad} is out of range: positions must be in [0, max_len={self.max_len})"
                )
        return self.embedding(positions)


def _bucket_table(num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket of every distance 0 .. max_distance within one direction (num_buckets buckets). (max_distance+1,)

    Computed once in float64 Python maths so the bucketing is the same on every device and dtype; distances past
    the end of the table are clamped to its last entry, which is already the last bucket.
    """
    exact = num_buckets // 2
    table = []
    for n in range(max_distance + 1):
        if n < exact:
            table.append(n)
        else:
            scaled = math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)
            table.append(min(num_buckets - 1, exact + int(scaled)))
    return torch.tensor(table, dtype=torch.long)


class RelativePositionBias(nn.Module):
    """T5-style learned additive attention bias from log-bucketed relative positions."""

    def __init__(
        self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"RelativePositionBias num_heads={num_heads} must be >= 1")
        if bidirectional and (num_buckets < 4 or num_buckets % 2 != 0):
            raise ValueError(
                f"RelativePositionBias num_buckets={num_buckets} must be even and >= 4 when bidirectional"
            )
        if num_buckets < 2:
            raise ValueError(f"RelativePositionBias num_buckets={num_buckets} must be >= 2")
        per_direction = num_buckets // 2 if bidirectional else num_buckets
        exact = per_direction // 2
        if max_distance <= exact:
            raise ValueError(
                f"RelativePositionBias max_distance={max_distance} must be > {exact} "
                f"(the exactly-resolved distances for num_buckets={num_buckets})"
            )
        self.num_heads = num_heads
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.bidirectional = bidirectional
        self._per_direction = per_direction
        self.register_buffer("bucket_table", _bucket_table(per_direction, max_distance), persistent=False)
        self.bias = nn.Embedding(num_buckets, num_heads)

    def bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        """Bucket ids (same shape, long) for ``relative_position = k_pos - q_pos``."""
        back = -relative_position  # n = q - k: positive for keys before the query
        if self.bidirectional:
            offset = (back < 0).long() * self._per_direction  # keys after the query use the upper half
            distance = back.abs()
        else:
            offset = torch.zeros_like(back)
            distance = back.clamp(min=0)
        return offset + self.bucket_table[distance.clamp(max=self.max_distance)]

    def forward(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor:
        """q_positions (B, Tq), k_positions (B, Tk) integer -> additive bias (B, H, Tq, Tk) float."""
        if q_positions.dim() != 2 or k_positions.dim() != 2:
            raise ValueError(
                f"positions must be (B, T); got q {tuple(q_positions.shape)} and k {tuple(k_positions.shape)}"
            )
        relative = k_positions[:, None, :].long() - q_positions[:, :, None].long()  # (B, Tq, Tk)
        return self.bias(self.bucket(relative)).permute(0, 3, 1, 2)  # (B, Tq, Tk, H) -> (B, H, Tq, Tk)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_buckets={self.num_buckets}, max_distance={self.max_distance}, "
            f"bidirectional={self.bidirectional}"
        )
