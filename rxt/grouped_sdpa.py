"""Masked grouped-query attention kept on SDPA's fused kernels.

With fewer key/value heads than query heads (GQA, SQA), SDPA needs ``enable_gqa``. Flash attention takes
``enable_gqa`` but no mask; the memory-efficient kernel takes a mask but not ``enable_gqa``. So a call with a mask
(or an additive bias) and grouped heads runs on the MATH backend unless cuDNN takes it: MATH writes the whole
(B, H, T, S) score matrix in float32, its softmax and a float32 matmul, forward and backward. The episode stages run
without cuDNN (`training.attention_backends`), and there every masked call of a SMAT step (encoder self-attention,
the memory attention's main step over the encoded keys) took that path: on an H200 the nano SMAT step at 128 x 18
ran 279 ms so, 230 ms with cuDNN allowed (benchmarks/results/smat_step.json).

Inside `expand_masked_gqa()`, `grouped_sdpa` repeats each key/value head for its query heads on such calls (the
group's query heads read copies of their one head, as ``enable_gqa`` defines it), and the memory-efficient kernel
takes them. The copies are of keys and values only (a few tokens here); unmasked calls keep ``enable_gqa`` and flash.
Same maths up to float rounding (tests/rxt/test_grouped_sdpa.py). Off by default: serving and the other stages keep
the kernels they had.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_expand = False  # read at trace time by torch.compile, which guards on it


@contextmanager
def expand_masked_gqa(enabled: bool = True) -> Iterator[None]:
    """Inside the block, masked grouped-query calls of `grouped_sdpa` repeat their key/value heads."""
    global _expand
    before, _expand = _expand, enabled
    try:
        yield
    finally:
        _expand = before


def grouped_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                 dropout_p: float = 0.0, is_causal: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` of q (..., H_q, T, d) over k, v (..., H_kv, S, d), H_kv dividing H_q (query
    head h reads key/value head h // (H_q / H_kv)); masked grouped calls expand the heads inside
    `expand_masked_gqa`."""
    groups = q.shape[-3] // k.shape[-3]
    if groups > 1 and attn_mask is not None and _expand:
        k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
        groups = 1
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          enable_gqa=groups > 1)


__all__ = ["expand_masked_gqa", "grouped_sdpa"]
