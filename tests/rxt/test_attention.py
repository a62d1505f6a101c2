"""The attention family (MHA, GQA, MQA, SQA, sSQA, xSQA) against a plain float64 reference.

The reference is written from the maths: explicit projections, RoPE as a complex rotation of channel pairs
(i, i + d/2), K/V heads repeated for the query groups, a boolean mask, an explicit softmax. It never calls
scaled_dot_product_attention.
"""

from __future__ import annotations

import math

import pytest
import torch

from rxt.attention import Attention
from rxt.attention_config import ATTENTION_VARIANTS, AttentionConfig
from rxt.kv_cache import KVCache
from rxt.masks import cached_causal_mask, causal_mask, key_padding_mask
from rxt.rope import RopeMode, RotaryEmbedding

DIM = 32
HEADS = 8  # head_dim 4; gqa 8/2, mqa 8/1, sqa 4/2, ssqa 4/4, xsqa 2/2
ROPE_BASE = 10_000.0
MAX_LEN = 64


# -- reference ------------------------------------------------------------------------------------------------
def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, heads * d) -> (B, heads, T, d)."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).permute(0, 2, 1, 3)


def reference_rope(x: torch.Tensor, positions: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotate (B, H, T, d) by positions (B, T) or (T,): pair (x_i, x_{i+d/2}) is the complex number
    x_i + j x_{i+d/2}, multiplied by exp(j * pos * base^(-2i/d))."""
    d = x.shape[-1]
    half = d // 2
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / d)
    angle = positions.to(torch.float64)[..., None] * theta  # (B, T, d/2) or (T, d/2)
    if angle.dim() == 3:
        angle = angle[:, None]  # over heads
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(
        torch.ones_like(angle), angle
    )
    return torch.cat((z.real, z.imag), dim=-1).to(x.dtype)


def reference_attention(
    attn: Attention,
    x: torch.Tensor,
    context: torch.Tensor | None = None,
    *,
    positions: torch.Tensor | None = None,
    context_positions: torch.Tensor | None = None,
    causal: bool = False,
    key_valid: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Float64 attention from the definition. ``mask`` (boolean, True = attend) is ANDed with ``causal`` and
    ``key_valid``. A query row with no visible key gives NaN here, as the definition does."""
    src = x if context is None else context
    h_q, h_kv = attn.cfg.num_query_heads, attn.cfg.num_kv_heads
    d = attn.cfg.head_dim
    q = _heads(_linear(x, attn.q_proj), h_q)
    k = _heads(_linear(src, attn.k_proj), h_kv)
    v = _heads(_linear(src, attn.v_proj), h_kv)
    q_pos = positions if positions is not None else torch.arange(x.shape[1])
    k_pos = positions if context is None else context_positions
    if k_pos is None:
        k_pos = torch.arange(src.shape[1])
    if attn.rope_mode in (RopeMode.FULL, RopeMode.QUERY):
        q = reference_rope(q, q_pos)
    if attn.rope_mode in (RopeMode.FULL, RopeMode.KEY):
        k = reference_rope(k, k_pos)
    group = h_q // h_kv
    # Query head i reads K/V head i // group.
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, H_q, T, S)
    t, s = scores.shape[-2:]
    allowed = torch.ones(x.shape[0], 1, t, s, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(t, s, dtype=torch.bool).tril()
    if key_valid is not None:
        allowed = allowed & key_valid.bool()[:, None, None, :]
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    out = (weights @ v).permute(0, 2, 1, 3).reshape(x.shape[0], t, h_q * d)
    return _linear(out, attn.o_proj)


# -- helpers --------------------------------------------------------------------------------------------------
def _module(name: str, rope_mode: str = "none", *, seed: int = 0, bias: bool = False) -> Attention:
    torch.manual_seed(seed)
    cfg = AttentionConfig.variant(name, dim=DIM, num_heads=HEADS, bias=bias)
    rope = RotaryEmbedding(cfg.head_dim, MAX_LEN, base=ROPE_BASE) if rope_mode != "none" else None
    return Attention(cfg, rope=rope, rope_mode=rope_mode).eval()


def _valid(lengths: list[int], total: int) -> torch.Tensor:
    """Right padding: (B, total) True for the first lengths[b] positions."""
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def _close(actual: torch.Tensor, expected: torch.Tensor, tol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol)


# -- equivalence with the reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATTENTION_VARIANTS)
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
@pytest.mark.parametrize("rope_mode", ["none", "full"])
def test_self_attention_matches_reference(name: str, causal: bool, padded: bool, rope_mode: str) -> None:
    attn = _module(name, rope_mode, bias=(name == "mha")).double()
    x = torch.randn(3, 7, DIM, dtype=torch.float64)
    lengths = [7, 4, 1]
    valid = _valid(lengths, 7) if padded else None
    if padded:
        mask = causal_mask(valid, 7, x.device) if causal else key_padding_mask(valid)
        out = attn(x, mask=mask)
    else:
        out = attn(x, causal=causal)
    expected = reference_attention(attn, x, causal=causal, key_valid=valid)
    assert out.shape == (3, 7, DIM)
    _close(out, expected, 1e-6)


@pytest.mark.parametrize("name", ATTENTION_VARIANTS)
@pytest.mark.parametrize("rope_mode", ["none", "query", "key", "full"])
@pytest.mark.parametrize("padded", [False, True], ids=["dense", "padded"])
def test_cross_attention_matches_reference(name: str, rope_mode: str, padded: bool) -> None:
    attn = _module(name, rope_mode, seed=1).double()
    x = torch.randn(2, 5, DIM, dtype=torch.float64)
    ctx = torch.randn(2, 9, DIM, dtype=torch.float64)
    positions = torch.tensor([[3, 4, 5, 6, 7], [0, 1, 2, 3, 4]])
    ctx_positions = torch.arange(9)
    valid = _valid([9, 3], 9) if padded else None
    mask = key_padding_mask(valid) if padded else None
    out = attn(x, ctx, positions=positions, context_positions=ctx_positions, mask=mask)
    expected = reference_attention(
        attn, x, ctx, positions=positions, context_positions=ctx_positions, key_valid=valid
    )
    assert out.shape == (2, 5, DIM)
    _close(out, expected, 1e-6)


def test_sqa_shrinks_query_and_output_projections() -> None:
    attn = _module("xsqa")
    d = DIM // HEADS
    assert attn.q_proj.weight.shape == (HEADS // 4 * d, DIM)
    assert attn.o_proj.weight.shape == (DIM, HEADS // 4 * d)
    assert attn.k_proj.weight.shape == (HEADS // 4 * d, DIM)


# -- members of the family that coincide -----------------------------------------------------------------------
def _same_weights(src: Attention, dst: Attention) -> Attention:
    dst.load_state_dict(src.state_dict())
    return dst


def test_sqa_with_full_query_heads_equals_gqa() -> None:
    gqa = _module("gqa", "full").double()
    # An SQA config whose query heads are not reduced: H_q = H, H_kv = H/4.
    sqa_cfg = AttentionConfig(dim=DIM, num_heads=HEADS, num_query_heads=HEADS, num_kv_heads=HEADS // 4)
    sqa = Attention(sqa_cfg, rope=RotaryEmbedding(sqa_cfg.head_dim, MAX_LEN), rope_mode="full").double()
    sqa = _same_weights(gqa, sqa).eval()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    _close(sqa(x, causal=True), gqa(x, causal=True), 1e-12)
    _close(sqa(x), gqa(x), 1e-12)


def test_gqa_with_full_kv_heads_equals_mha() -> None:
    mha = _module("mha", "full", bias=True).double()
    gqa_cfg = AttentionConfig(dim=DIM, num_heads=HEADS, num_query_heads=HEADS, num_kv_heads=HEADS, bias=True)
    gqa = Attention(gqa_cfg, rope=RotaryEmbedding(gqa_cfg.head_dim, MAX_LEN), rope_mode="full").double()
    gqa = _same_weights(mha, gqa).eval()
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    _close(gqa(x, causal=True), mha(x, causal=True), 1e-12)


def test_gqa_equals_mha_with_repeated_kv_weights() -> None:
    """GQA is MHA whose K/V projection rows are shared by each group of query heads (head i -> i // group)."""
    gqa = _module("gqa", "full", seed=3).double()
    mha = _module("mha", "full", seed=4).double()
    group = HEADS // gqa.cfg.num_kv_heads
    d = gqa.cfg.head_dim
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(gqa.cfg.num_kv_heads, d, DIM)
            getattr(mha, name).weight.copy_(w.repeat_interleave(group, dim=0).reshape(HEADS * d, DIM))
    x = torch.randn(2, 6, DIM, dtype=torch.float64)
    _close(gqa(x, causal=True), mha(x, causal=True), 1e-10)


# -- configuration errors -------------------------------------------------------------------------------------
def test_query_heads_not_divisible_by_kv_heads() -> None:
    with pytest.raises(ValueError, match=r"num_query_heads=6.*num_kv_heads=4"):
        AttentionConfig(dim=32, num_heads=8, num_query_heads=6, num_kv_heads=4)


def test_dim_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match=r"dim=30.*num_heads=8"):
        AttentionConfig(dim=30, num_heads=8)


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match=r"'gqqa'.*unknown"):
        AttentionConfig.variant("gqqa", dim=32, num_heads=8)


@pytest.mark.parametrize("field", ["dim", "num_heads", "num_query_heads", "num_kv_heads"])
def test_non_positive_counts(field: str) -> None:
    kwargs = {"dim": 32, "num_heads": 8, field: 0}
    with pytest.raises(ValueError, match=f"{field}=0"):
        AttentionConfig(**kwargs)


def test_variant_head_counts() -> None:
    counts = {
        name: (c.num_query_heads, c.num_kv_heads)
        for name in ATTENTION_VARIANTS
        for c in [AttentionConfig.variant(name, dim=512, num_heads=16)]
    }
    assert counts == {
        "mha": (16, 16),
        "gqa": (16, 4),
        "mqa": (16, 1),
        "sqa": (8, 4),
        "ssqa": (8, 8),
        "xsqa": (4, 4),
    }


def test_rope_mode_without_rope_errors() -> None:
    cfg = AttentionConfig(dim=DIM, num_heads=HEADS)
    with pytest.raises(ValueError, match="rope_mode='full'"):
        Attention(cfg, rope_mode="full")


# -- padding --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mha", "gqa", "xsqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_right_padding_does_not_change_real_positions(name: str, causal: bool) -> None:
    attn = _module(name, "full", seed=5).double()
    lengths = [6, 3, 1]
    x = torch.randn(3, 6, DIM, dtype=torch.float64)
    # Junk in the padding must not leak into real positions.
    x = torch.where(_valid(lengths, 6)[..., None], x, 1e3 * torch.randn_like(x))
    valid = _valid(lengths, 6)
    mask = causal_mask(valid, 6, x.device) if causal else key_padding_mask(valid)
    batched = attn(x, mask=mask)
    for b, n in enumerate(lengths):
        alone = attn(x[b : b + 1, :n], causal=causal)
        _close(batched[b, :n], alone[0], 1e-10)


@pytest.mark.parametrize("name", ["mha", "gqa", "xsqa"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_fully_padded_row_is_finite(name: str, causal: bool) -> None:
    attn = _module(name, "full").train()  # dropout 0: train mode only to exercise gradients
    valid = _valid([4, 0], 4)
    mask = causal_mask(valid, 4, torch.device("cpu")) if causal else key_padding_mask(valid)
    # The builders keep a visible key in every row, so even an explicit softmax (which some SDPA kernels do not
    # guard; the CPU one returns zeros) stays finite.
    assert mask.expand(2, 1, 4, 4).any(-1).all()
    x = torch.randn(2, 4, DIM, requires_grad=True)
    with torch.no_grad():
        explicit = reference_attention(attn.double(), x.double(), mask=mask)
        attn.float()
    assert torch.isfinite(explicit).all()
    out = attn(x, mask=mask)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


# -- cached decoding ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ATTENTION_VARIANTS)
def test_cached_decoding_matches_full_forward(name: str) -> None:
    attn = _module(name, "full", seed=7)  # float32
    lengths = [5, 2, 4]
    prompt_len, steps = max(lengths), 4
    batch = len(lengths)
    prompt = torch.randn(batch, prompt_len, DIM)
    new = torch.randn(batch, steps, DIM)  # a different token embedding per row and step

    cache = KVCache(1, batch, attn.cfg.num_kv_heads, attn.cfg.head_dim, capacity=prompt_len + steps)
    with torch.no_grad():
        positions = cache.positions_for(prompt_len)
        mask = cached_causal_mask(positions, cache.written + prompt_len)
        prefill = attn(prompt, positions=positions, mask=mask, cache=cache, layer_index=0)
        cache.advance(prompt_len, torch.tensor(lengths))
        decoded = []
        for i in range(steps):
            positions = cache.positions_for(1)
            assert positions[:, 0].tolist() == [n + i for n in lengths]
            mask = cached_causal_mask(positions, cache.written + 1)
            decoded.append(
                attn(new[:, i : i + 1], positions=positions, mask=mask, cache=cache, layer_index=0)
            )
            cache.advance(1)
        decoded = torch.cat(decoded, dim=1)

        for b, n in enumerate(lengths):
            full_seq = torch.cat((prompt[b, :n], new[b]), dim=0)[None]
            full = attn(full_seq, causal=True)[0]
            _close(prefill[b, :n], full[:n], 1e-5)
            _close(decoded[b], full[n:], 1e-5)


# -- precomputed keys/values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mha", "gqa", "sqa", "xsqa"])
@pytest.mark.parametrize("rope_mode", ["none", "query", "key"])
def test_precomputed_key_value_equals_context(name: str, rope_mode: str) -> None:
    attn = _module(name, rope_mode, seed=9).double()
    x = torch.randn(2, 3, DIM, dtype=torch.float64)
    ctx = torch.randn(2, 8, DIM, dtype=torch.float64)
    positions = torch.tensor([[5, 6, 7], [2, 3, 4]])
    mask = key_padding_mask(_valid([8, 5], 8))
    kv = attn.project_key_value(ctx)
    with_kv = attn(x, positions=positions, key_value=kv, mask=mask)
    with_ctx = attn(x, ctx, positions=positions, mask=mask)
    _close(with_kv, with_ctx, 1e-12)
    # And the precomputed K/V win over a (different) context.
    _close(attn(x, torch.zeros_like(ctx), positions=positions, key_value=kv, mask=mask), with_ctx, 1e-12)
