"""The position scheme of one model, built once from its config and shared by all of its layers.

RoPE (default) lives inside attention; learned absolute positions are added to the token embeddings; the
relative bias is an additive attention bias computed once per forward and passed to every self-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from rxt.positions import LearnedAbsolutePositions, RelativePositionBias
from rxt.rope import RotaryEmbedding


class PositionEncoding(nn.Module):
    def __init__(self, kind: str, *, head_dim: int, num_heads: int, max_seq_len: int, dim: int, rope_base: float):
        super().__init__()
        self.kind = kind
        # Memory cross-attention rotates queries and memory attention rotates keys even when the self-attention
        # scheme is a legacy one, so the rotary tables always exist (they are buffers, not parameters).
        self.rope = RotaryEmbedding(head_dim, max_seq_len, rope_base)
        self.absolute = LearnedAbsolutePositions(max_seq_len, dim) if kind == "absolute" else None
        self.relative = RelativePositionBias(num_heads) if kind == "relative" else None

    @property
    def self_attention_rope(self) -> RotaryEmbedding | None:
        return self.rope if self.kind == "rope" else None

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x + self.absolute(positions) if self.absolute is not None else x

    def bias(self, q_positions: torch.Tensor, k_positions: torch.Tensor) -> torch.Tensor | None:
        return self.relative(q_positions, k_positions) if self.relative is not None else None
