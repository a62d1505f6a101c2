"""One attention module for the whole family: MHA, GQA, MQA, SQA, sSQA, xSQA.

The variant is set by the head counts in `AttentionConfig`. Shapes: x (B, T, D); queries (B, H_q, T, d);
keys and values (B, H_kv, S, d). With H_q < H (SQA) the query projection is D -> H_q*d and the output
projection H_q*d -> D, so the score and value products cost H_q/H of MHA's.

The same module serves self-attention (keys from x), cross-attention (keys from a ``context``), cached
decoding (keys written to a `KVCache`) and precomputed keys (memory cross-attention projects STM once per turn
and passes the K/V to every decode step).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention_config import AttentionConfig
from rxt.grouped_sdpa import grouped_sdpa
from rxt.kv_cache import KVCache
from rxt.rope import RopeMode, RotaryEmbedding

_FLASH_AVAILABLE = importlib.util.find_spec("flash_attn") is not None


class Attention(nn.Module):
    def __init__(
        self,
        cfg: AttentionConfig,
        *,
        rope: RotaryEmbedding | None = None,
        rope_mode: RopeMode | str = RopeMode.NONE,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope_mode = RopeMode(rope_mode)
        if self.rope_mode is not RopeMode.NONE and rope is None:
            raise ValueError(f"Attention rope_mode={self.rope_mode.value!r} needs a RotaryEmbedding")
        self.rope = rope if self.rope_mode is not RopeMode.NONE else None
        d = cfg.head_dim
        if self.rope is not None and self.rope.head_dim != d:
            raise ValueError(f"RotaryEmbedding head_dim={self.rope.head_dim} must equal the attention head_dim={d}")
        self.num_query_heads = cfg.num_query_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = d
        self.q_proj = nn.Linear(cfg.dim, cfg.num_query_heads * d, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * d, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.num_kv_heads * d, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.num_query_heads * d, cfg.dim, bias=cfg.bias)
        if cfg.backend == "flash" and not _FLASH_AVAILABLE:
            raise ValueError("AttentionConfig.backend='flash' needs the flash-attn package (pip install .[flash])")

    # -- projections -----------------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, heads, self.head_dim).transpose(1, 2)

    def project_query(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, H_q, T, d), rotated when the RoPE mode rotates queries."""
        q = self._split(self.q_proj(x), self.num_query_heads)
        if self.rope is not None and self.rope_mode.rotates_queries:
            q = self.rope.rotate(q, _default_positions(positions, x))
        return q

    def project_key_value(
        self, context: torch.Tensor, positions: torch.Tensor | None = None, *, input_scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, D) -> keys and values (B, H_kv, S, d); keys rotated when the RoPE mode rotates keys.

        ``input_scale`` (D,): the keys and values of ``context * input_scale`` (e.g. an RMSNorm's weight), with the
        scale folded into the two projections' weights and both run as one matmul. Same maths; the scaled context
        (and, under autocast, a second cast of it) is never written, nor its gradient: what the STM's projection
        for memory cross-attention costs on a stack of every SMAT turn's memory."""
        if input_scale is None:
            k = self._split(self.k_proj(context), self.num_kv_heads)
            v = self._split(self.v_proj(context), self.num_kv_heads)
        else:
            weight = torch.cat([self.k_proj.weight, self.v_proj.weight]) * input_scale
            bias = torch.cat([self.k_proj.bias, self.v_proj.bias]) if self.k_proj.bias is not None else None
            k, v = (self._split(t, self.num_kv_heads) for t in F.linear(context, weight, bias).chunk(2, dim=-1))
        if self.rope is not None and self.rope_mode.rotates_keys:
            k = self.rope.rotate(k, _default_positions(positions, context))
        return k, v

    # -- attention -------------------------------------------------------------------------------------------
    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled dot-product attention of projected heads, merged and output-projected to (B, T, D).

        ``mask`` is boolean (True = attend), ``bias`` additive (e.g. relative positions); ``causal`` without a
        mask means square causal attention and takes the fused kernels' fast path.
        """
        dropout = self.cfg.dropout if self.training else 0.0
        if self._use_flash(q, mask, bias):
            from flash_attn import flash_attn_func  # optional dependency, (B, T, H, d) layout

            out = flash_attn_func(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout, causal=causal
            )
            out = out.reshape(q.shape[0], q.shape[2], -1)
        else:
            attn_mask = mask
            if bias is not None:
                attn_mask = bias.to(q.dtype)
                if mask is not None:
                    attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
            if causal and attn_mask is not None:
                raise ValueError("Attention.attend: pass causality inside `mask` when a mask or bias is given")
            if causal and q.shape[2] != k.shape[2]:
                # SDPA would align a short query block top-left (flash: bottom-right); refuse the ambiguity.
                raise ValueError(
                    f"Attention.attend: causal=True needs as many queries as keys ({q.shape[2]} vs {k.shape[2]}); "
                    "pass an explicit mask (e.g. rxt.masks.cached_causal_mask)"
                )
            # grouped heads with a mask: kept off SDPA's MATH backend inside `expand_masked_gqa` (rxt.grouped_sdpa)
            out = grouped_sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout, is_causal=causal)
            out = out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
        return self.o_proj(out)

    def _use_flash(self, q: torch.Tensor, mask: torch.Tensor | None, bias: torch.Tensor | None) -> bool:
        return (
            self.cfg.backend == "flash"
            and q.is_cuda
            and q.dtype in (torch.float16, torch.bfloat16)
            and mask is None
            and bias is None
        )

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        context_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Attend from ``x`` (B, T, D).

        Keys come from, in order of precedence: ``key_value`` (already projected, e.g. STM K/V computed once per
        turn), ``context`` (cross-attention), or ``x`` itself. With ``cache``, the new keys of ``x`` are written
        at ``positions`` and attention reads the cache (``mask`` must then be a cached-causal mask).
        """
        q = self.project_query(x, positions)
        if key_value is not None:
            k, v = key_value
        elif context is not None:
            k, v = self.project_key_value(context, context_positions)
        else:
            k, v = self.project_key_value(x, positions)
            if cache is not None:
                if positions is None:
                    raise ValueError("Attention: cached self-attention needs explicit positions")
                k, v = cache.write(layer_index, k, v, positions)
        return self.attend(q, k, v, mask=mask, causal=causal, bias=bias)


def _default_positions(positions: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    return positions if positions is not None else torch.arange(x.shape[1], device=x.device)
