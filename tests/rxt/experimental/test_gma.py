import pytest
import torch

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.aux_loss import collect_aux_loss
from rxt.experimental.gma import DeepMoEAttention, GroupedMoEAttention
from rxt.masks import causal_mask, key_padding_mask
from rxt.rope import RotaryEmbedding

CFG = AttentionConfig(dim=32, num_heads=8, num_query_heads=8, num_kv_heads=4)


def _pair(cls, **kw):
    torch.manual_seed(0)
    rope = RotaryEmbedding(CFG.head_dim, 64)
    gqa = Attention(CFG, rope=rope, rope_mode="full").double()
    moe = cls(CFG, rope=rope, rope_mode="full", **kw).double()
    moe.load_state_dict(gqa.state_dict(), strict=False)
    with torch.no_grad():
        moe.kv_router.weight.normal_()  # any routing: with k = all heads it must not matter
        if hasattr(moe, "query_router"):
            moe.query_router.weight.normal_()
    return gqa, moe


@pytest.mark.parametrize("causal", [True, False])
def test_gma_with_all_heads_equals_gqa(causal):
    gqa, gma = _pair(GroupedMoEAttention, kv_top_k=4)
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    pos = torch.arange(11)
    torch.testing.assert_close(
        gma(x, positions=pos, causal=causal), gqa(x, positions=pos, causal=causal), atol=1e-6, rtol=0
    )


def test_gma_with_all_heads_equals_gqa_with_padding_mask():
    gqa, gma = _pair(GroupedMoEAttention, kv_top_k=4)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    valid = torch.tensor([[1] * 9, [1] * 5 + [0] * 4], dtype=torch.bool)
    for mask in (causal_mask(valid, 9, x.device), key_padding_mask(valid)):
        torch.testing.assert_close(gma(x, mask=mask), gqa(x, mask=mask), atol=1e-6, rtol=0)


def test_dma_with_all_heads_equals_gqa():
    gqa, dma = _pair(DeepMoEAttention, kv_top_k=4, query_top_k=8)
    x = torch.randn(2, 7, 32, dtype=torch.float64)
    pos = torch.arange(7)
    torch.testing.assert_close(
        dma(x, positions=pos, causal=True), gqa(x, positions=pos, causal=True), atol=1e-6, rtol=0
    )


def _brute_force_gma(gma, x, causal):
    """Per token, per query head: attend to the K/V head picked for its slot; loops, float64."""
    b, t, _ = x.shape
    q = gma.project_query(x)
    k, v = gma.project_key_value(x)
    probs = gma.kv_router(x).softmax(-1)
    kk, g = gma.kv_top_k, gma.num_query_heads // gma.kv_top_k
    out = torch.zeros_like(q)
    for bi in range(b):
        for ti in range(t):
            top = probs[bi, ti].topk(kk).indices.sort().values
            w = probs[bi, ti, top] / probs[bi, ti, top].sum()
            for h in range(gma.num_query_heads):
                e = top[h // g]
                s = k[bi, e] @ q[bi, h, ti] / gma.head_dim**0.5
                if causal:
                    s[ti + 1 :] = float("-inf")
                out[bi, h, ti] = kk * w[h // g] * (s.softmax(-1) @ v[bi, e])
    return gma.o_proj(out.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_gma_routed_matches_brute_force(top_k):
    torch.manual_seed(1)
    gma = GroupedMoEAttention(CFG, kv_top_k=top_k).double()
    with torch.no_grad():
        gma.kv_router.weight.normal_()
    x = torch.randn(2, 6, 32, dtype=torch.float64)
    for causal in (True, False):
        torch.testing.assert_close(gma(x, causal=causal), _brute_force_gma(gma, x, causal), atol=1e-9, rtol=0)


def test_dma_zeroes_unselected_query_heads():
    torch.manual_seed(2)
    dma = DeepMoEAttention(CFG, kv_top_k=2, query_top_k=3).double()
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    gate, loss = dma._query_gate(x)
    assert gate.shape == (1, 8, 5)
    assert ((gate > 0).sum(dim=1) == 3).all()
    torch.testing.assert_close(gate.sum(dim=1), torch.full((1, 5), 3.0, dtype=torch.float64))
    assert loss.dim() == 0


def test_aux_loss_collected_and_differentiable():
    torch.manual_seed(3)
    model = torch.nn.Sequential(GroupedMoEAttention(CFG, kv_top_k=1), DeepMoEAttention(CFG, kv_top_k=2))
    x = torch.randn(2, 8, 32)
    y = model[1](model[0](x, causal=True), causal=True)
    aux = collect_aux_loss(model)
    assert aux.dim() == 0 and aux.item() > 0
    (y.pow(2).mean() + aux).backward()
    for m in model:
        assert m.kv_router.weight.grad is not None and m.kv_router.weight.grad.abs().sum() > 0
    assert model[1].query_router.weight.grad.abs().sum() > 0


def test_gma_cached_decoding_matches_full_forward():
    from rxt.kv_cache import KVCache
    from rxt.masks import cached_causal_mask

    torch.manual_seed(4)
    rope = RotaryEmbedding(CFG.head_dim, 32)
    gma = GroupedMoEAttention(CFG, rope=rope, rope_mode="full", kv_top_k=2).double()
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    full = gma(x, positions=torch.arange(6), causal=True)
    cache = KVCache(1, 1, 4, CFG.head_dim, 8, dtype=torch.float64)
    steps = []
    for i in range(6):
        pos = cache.positions_for(1)
        steps.append(
            gma(x[:, i : i + 1], positions=pos, mask=cached_causal_mask(pos, cache.key_count(1)), cache=cache)
        )
        cache.advance(1)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=0)


def test_invalid_top_k():
    with pytest.raises(ValueError):
        GroupedMoEAttention(CFG, kv_top_k=5)
    with pytest.raises(ValueError):
        GroupedMoEAttention(AttentionConfig(dim=24, num_heads=6, num_kv_heads=3), kv_top_k=4)
    with pytest.raises(ValueError):
        DeepMoEAttention(CFG, query_top_k=9)
