"""Pre-norm transformer layers.

Encoder layer:   x += SelfAttn(N1 x)                  (bidirectional, key padding mask)
                 x += FFN(N2 x)
Decoder layer:   x += SelfAttn(N1 x)                  (causal, optional KV cache)
                 x += MemCrossAttn(q = N2 x, k = v = Norm(STM_l))   (skipped in memory-free layers)
                 x += FFN(N3 x)

Memory cross-attention keys/values are projected from the STM once per turn (`DecoderLayer.project_memory`)
and handed to every decode step, so a generated token costs one query projection against S cached slots.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.ffn import FFNConfig, build_ffn
from rxt.kv_cache import KVCache
from rxt.rope import RopeMode, RotaryEmbedding

MemoryKV = tuple[torch.Tensor, torch.Tensor]


class EncoderLayer(nn.Module):
    def __init__(
        self, attention: AttentionConfig, ffn: FFNConfig, rope: RotaryEmbedding | None, norm_eps: float
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        self.self_attn = Attention(attention, rope=rope, rope_mode=RopeMode.FULL if rope else RopeMode.NONE)
        self.ffn_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        self.ffn = build_ffn(ffn)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None,
        mask: torch.Tensor | None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.attn_norm(x), positions=positions, mask=mask, bias=bias)
        return x + self.ffn(self.ffn_norm(x))


class DecoderLayer(nn.Module):
    def __init__(
        self,
        attention: AttentionConfig,
        ffn: FFNConfig,
        rope: RotaryEmbedding | None,
        norm_eps: float,
        *,
        cross_attention: AttentionConfig | None = None,
        memory_rope: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        self.self_attn = Attention(attention, rope=rope, rope_mode=RopeMode.FULL if rope else RopeMode.NONE)
        self.has_memory = cross_attention is not None
        if cross_attention is not None:
            self.cross_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
            self.memory_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
            # Memory slots are a set, not a sequence: only the token-side queries are rotated.
            self.memory_cross_attn = Attention(cross_attention, rope=memory_rope, rope_mode=RopeMode.QUERY)
        self.ffn_norm = nn.RMSNorm(attention.dim, eps=norm_eps)
        self.ffn = build_ffn(ffn)

    def project_memory(self, memory: torch.Tensor) -> MemoryKV | None:
        """STM layer (B, S, D) -> keys/values (B, H_kv, S, d) for memory cross-attention, or None.

        ``memory_norm``'s weight is folded into the key/value projections (`Attention.project_key_value`'s
        ``input_scale``): the same values as projecting ``memory_norm(memory)``."""
        if not self.has_memory:
            return None
        norm = self.memory_norm
        normed = F.rms_norm(memory, norm.normalized_shape, eps=norm.eps)
        if normed.dtype != norm.weight.dtype:  # the dtype the weighted norm gave it
            normed = normed.to(torch.promote_types(normed.dtype, norm.weight.dtype))
        return self.memory_cross_attn.project_key_value(normed, input_scale=norm.weight)

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        memory: MemoryKV | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.self_attn(
            h, positions=positions, mask=mask, causal=causal, bias=bias, cache=cache, layer_index=layer_index
        )
        if self.has_memory and memory is not None:
            x = x + self.memory_cross_attn(
                self.cross_norm(x), positions=positions, key_value=memory, mask=memory_mask
            )
        return x + self.ffn(self.ffn_norm(x))
