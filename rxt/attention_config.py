"""Head-count configuration of the attention family (MHA, GQA, MQA, SQA, sSQA, xSQA).

All members share one module (`rxt.attention.Attention`); they differ only in two numbers:
``num_query_heads`` (H_q) and ``num_kv_heads`` (H_kv), relative to the base head count H that fixes the head
dimension d = dim / H.

=========  ===========  ============  ===========================================================
variant    H_q          H_kv          what it saves
=========  ===========  ============  ===========================================================
mha        H            H             nothing (reference)
gqa        H            H / 4         KV-cache size and K/V projection (memory bandwidth)
mqa        H            1             as GQA, to the limit
sqa        H / 2        H / 4         attention FLOPs scale with H_q / H (compute-bound passes)
ssqa       H / 2        H / 2         "symmetric" SQA: half the FLOPs, keeps K/V capacity
xsqa       H / 4        H / 4         "extreme" SQA: a quarter of the attention FLOPs
=========  ===========  ============  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass

ATTENTION_BACKENDS = ("sdpa", "flash")


@dataclass
class AttentionConfig:
    """Shape of one attention layer.

    Args:
        dim: model width D.
        num_heads: base head count H; the head dimension is ``dim // num_heads``.
        num_query_heads: H_q (defaults to H). Below H this is Sparse Query Attention.
        num_kv_heads: H_kv (defaults to H_q). Must divide H_q.
        dropout: attention-probability dropout in training.
        bias: whether projections carry biases.
        backend: "sdpa" (PyTorch scaled_dot_product_attention, default) or "flash" (the ``flash_attn``
            package, used only where it applies: CUDA, fp16/bf16, no explicit mask; SDPA otherwise).
    """

    dim: int
    num_heads: int
    num_query_heads: int | None = None
    num_kv_heads: int | None = None
    dropout: float = 0.0
    bias: bool = False
    backend: str = "sdpa"

    def __post_init__(self) -> None:
        if self.num_query_heads is None:
            self.num_query_heads = self.num_heads
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_query_heads
        for name in ("dim", "num_heads", "num_query_heads", "num_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"AttentionConfig.{name}={getattr(self, name)} must be >= 1")
        if self.dim % self.num_heads != 0:
            raise ValueError(
                f"AttentionConfig.dim={self.dim} must be divisible by num_heads={self.num_heads} (D % H != 0)"
            )
        if self.num_query_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"AttentionConfig.num_query_heads={self.num_query_heads} must be divisible by "
                f"num_kv_heads={self.num_kv_heads} (H_q % H_kv != 0)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AttentionConfig.dropout={self.dropout} must be in [0, 1)")
        if self.backend not in ATTENTION_BACKENDS:
            raise ValueError(f"AttentionConfig.backend={self.backend!r} must be one of {ATTENTION_BACKENDS}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def variant(cls, name: str, dim: int, num_heads: int, **kwargs) -> AttentionConfig:
        """Build a named member of the family (see the module table) for base head count ``num_heads``."""
        h = num_heads
        table = {
            "mha": (h, h),
            "gqa": (h, max(1, h // 4)),
            "mqa": (h, 1),
            "sqa": (max(1, h // 2), max(1, h // 4)),
            "ssqa": (max(1, h // 2), max(1, h // 2)),
            "xsqa": (max(1, h // 4), max(1, h // 4)),
        }
        if name not in table:
            raise ValueError(f"attention variant {name!r} is unknown; choose one of {sorted(table)}")
        q, kv = table[name]
        if dim % num_heads == 0 and (h % q or q % kv):
            raise ValueError(
                f"attention variant {name!r} needs num_heads divisible by 4 (H_q={q}, H_kv={kv} from "
                f"num_heads={num_heads}); give explicit head counts instead"
            )
        return cls(dim=dim, num_heads=h, num_query_heads=q, num_kv_heads=kv, **kwargs)


ATTENTION_VARIANTS = ("mha", "gqa", "mqa", "sqa", "ssqa", "xsqa")
