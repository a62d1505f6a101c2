"""`grouped_sdpa`: masked grouped-query calls expand their key/value heads inside `expand_masked_gqa` (so the fused
memory-efficient kernel can take them on CUDA) with the same values and gradients as ``enable_gqa`` (float64);
unmasked calls and calls outside the block are left to ``enable_gqa``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rxt import grouped_sdpa as module
from rxt.grouped_sdpa import expand_masked_gqa, grouped_sdpa


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(3, 4, 5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 2, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 2, 7, 8, generator=g, dtype=torch.float64, requires_grad=True)
    valid = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    valid[0, ..., 5:] = False
    valid[2, ..., 3:] = False
    return q, k, v, valid


def _reference(q, k, v, mask):
    """Attention written out: query head h reads key/value head h // 2, float64."""
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return scores.softmax(dim=-1) @ v


def _grads(out, tensors):
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    return torch.autograd.grad((out * weight).sum(), tensors)


@pytest.mark.parametrize("kind", ["bool", "bias"])
def test_expanded_masked_call_equals_enable_gqa_and_the_written_out_attention(kind):
    q, k, v, valid = _inputs()
    mask = valid if kind == "bool" else torch.zeros(valid.shape, dtype=torch.float64).masked_fill(~valid, -torch.inf)
    plain = grouped_sdpa(q, k, v, attn_mask=mask)
    with expand_masked_gqa():
        expanded = grouped_sdpa(q, k, v, attn_mask=mask)
    ref = _reference(q, k, v, mask)
    torch.testing.assert_close(expanded, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(plain, ref, rtol=0, atol=1e-12)
    for a, b in zip(_grads(expanded, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_only_masked_grouped_calls_inside_the_block_expand(monkeypatch):
    seen = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kwargs):
        seen.append((k.shape[1], kwargs["enable_gqa"]))
        return sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(module.F, "scaled_dot_product_attention", spy)
    q, k, v, valid = _inputs()
    grouped_sdpa(q, k, v, attn_mask=valid)  # outside the block: enable_gqa
    with expand_masked_gqa():
        grouped_sdpa(q, k, v, attn_mask=valid)  # masked: heads expanded
        grouped_sdpa(q, k, v)  # unmasked: enable_gqa (flash takes it)
        grouped_sdpa(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1), attn_mask=valid)  # no groups
        with expand_masked_gqa(False):
            grouped_sdpa(q, k, v, attn_mask=valid)
        grouped_sdpa(q, k, v, attn_mask=valid)  # the inner block restored the outer setting
    grouped_sdpa(q, k, v, attn_mask=valid)  # and the outer block the default
    assert seen == [(2, True), (4, False), (2, True), (4, False), (2, True), (4, False), (2, True)]
