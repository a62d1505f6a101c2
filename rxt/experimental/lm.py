"""`ExperimentalAttentionTransformer`: a small classic causal LM whose attention is chosen by name.

For like-for-like comparisons of the attention family with the experimental members: embedding, N pre-norm
layers (x += Attn(RMSNorm x) causal with RoPE; x += SwiGLU(RMSNorm x)), final RMSNorm, LM head (tied by default).

Names (`ATTENTION_NAMES`): "mha", "gqa", "mqa", "sqa", "ssqa", "xsqa" (the `rxt.attention_config` table),
"gma" and "dma" (`rxt.experimental.gma`, H_q = H query heads, ``moe_kv_heads`` candidate K/V heads, default H/2),
"flex-sqa" (`rxt.experimental.flex_sqa`, SQA head counts H/2 and H/4, ``window`` and ``num_global``).
Router balancing losses are collected with `rxt.aux_loss.collect_aux_loss` into ``output.aux_loss``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.attention_config import ATTENTION_VARIANTS, AttentionConfig
from rxt.aux_loss import collect_aux_loss
from rxt.experimental.flex_sqa import FlexSQAAttention
from rxt.experimental.gma import DeepMoEAttention, GroupedMoEAttention
from rxt.ffn import FFNConfig, GatedFFN
from rxt.masks import causal_mask
from rxt.rope import RopeMode, RotaryEmbedding

ATTENTION_NAMES = (*ATTENTION_VARIANTS, "gma", "dma", "flex-sqa")


@dataclass
class ExperimentalLMConfig:
    """Shape of an :class:`ExperimentalAttentionTransformer`.

    Args:
        attention: one of `ATTENTION_NAMES`.
        moe_kv_heads: GMA/DMA candidate K/V heads (default num_heads // 2).
        kv_top_k: GMA/DMA K/V heads per token (default moe_kv_heads // 2).
        query_top_k: DMA query heads per token (default num_heads // 2).
        balance_loss_weight: router balancing-loss scale (GMA/DMA).
        window, num_global, flex_backend: Flex-SQA pattern and path.
    """

    vocab_size: int = 8192
    dim: int = 128
    num_layers: int = 4
    num_heads: int = 8
    ffn_hidden_dim: int = 384
    max_seq_len: int = 1024
    attention: str = "gqa"
    moe_kv_heads: int | None = None
    kv_top_k: int | None = None
    query_top_k: int | None = None
    balance_loss_weight: float = 0.01
    window: int = 128
    num_global: int = 4
    flex_backend: str = "auto"
    rope_base: float = 10_000.0
    norm_eps: float = 1e-6
    tie_lm_head: bool = True

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_NAMES:
            raise ValueError(f"attention {self.attention!r} is unknown; choose one of {ATTENTION_NAMES}")
        self.attention_config()  # fail early on bad head counts

    def attention_config(self) -> AttentionConfig:
        h = self.num_heads
        if self.attention in ATTENTION_VARIANTS:
            return AttentionConfig.variant(self.attention, self.dim, h)
        if self.attention == "flex-sqa":
            return AttentionConfig.variant("sqa", self.dim, h)
        kv = self.moe_kv_heads or max(1, h // 2)
        return AttentionConfig(self.dim, h, num_query_heads=h, num_kv_heads=kv)

    def to_dict(self) -> dict:
        return asdict(self)


def build_attention(cfg: ExperimentalLMConfig, rope: RotaryEmbedding) -> nn.Module:
    """One self-attention module for ``cfg.attention`` (RoPE on queries and keys)."""
    att = cfg.attention_config()
    common = dict(rope=rope, rope_mode=RopeMode.FULL)
    if cfg.attention == "gma":
        return GroupedMoEAttention(
            att, kv_top_k=cfg.kv_top_k, balance_loss_weight=cfg.balance_loss_weight, **common
        )
    if cfg.attention == "dma":
        return DeepMoEAttention(
            att,
            kv_top_k=cfg.kv_top_k,
            query_top_k=cfg.query_top_k,
            balance_loss_weight=cfg.balance_loss_weight,
            **common,
        )
    if cfg.attention == "flex-sqa":
        return FlexSQAAttention(
            att, window=cfg.window, num_global=cfg.num_global, backend=cfg.flex_backend, **common
        )
    return Attention(att, **common)


class _Layer(nn.Module):
    def __init__(self, cfg: ExperimentalLMConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.self_attn = build_attention(cfg, rope)
        self.ffn_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn = GatedFFN(
            FFNConfig(dim=cfg.dim, hidden_dim=cfg.ffn_hidden_dim, activation="silu", gated=True)
        )

    def forward(self, x, *, positions, mask, causal):
        x = x + self.self_attn(self.attn_norm(x), positions=positions, mask=mask, causal=causal)
        return x + self.ffn(self.ffn_norm(x))


@dataclass
class ExperimentalLMOutput:
    logits: torch.Tensor  # (B, T, V)
    aux_loss: torch.Tensor  # 0-dim, sum of router balancing losses (0 for dense attention)
    loss: torch.Tensor | None = None  # next-token cross-entropy + aux_loss, when labels are given


class ExperimentalAttentionTransformer(nn.Module):
    """Causal LM for attention comparisons; ``forward(input_ids, attention_mask=None, labels=None)``."""

    def __init__(self, config: ExperimentalLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        head_dim = config.dim // config.num_heads
        self.rope = RotaryEmbedding(head_dim, config.max_seq_len, config.rope_base)
        self.layers = nn.ModuleList(_Layer(config, self.rope) for _ in range(config.num_layers))
        self.norm = nn.RMSNorm(config.dim, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_lm_head:
            self.lm_head.weight = self.embedding.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> ExperimentalLMOutput:
        """``labels`` (B, T) are next-token targets aligned with ``input_ids`` (shifted inside; -100 ignored)."""
        t = input_ids.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={self.config.max_seq_len}")
        positions = torch.arange(t, device=input_ids.device)
        mask = causal_mask(attention_mask, t, input_ids.device) if attention_mask is not None else None
        x = self.embedding(input_ids)
        for layer in self.layers:
            x = layer(x, positions=positions, mask=mask, causal=mask is None)
        logits = self.lm_head(self.norm(x))
        aux = collect_aux_loss(self)
        loss = None
        if labels is not None:
            ce = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
            loss = ce + aux
        return ExperimentalLMOutput(logits=logits, aux_loss=aux, loss=loss)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
