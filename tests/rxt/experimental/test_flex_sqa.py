import pytest
import torch

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.experimental.flex_sqa import (
    FLEX_AVAILABLE,
    FlexSQAAttention,
    dense_mask,
    sliding_window_mask_mod,
    use_flex_sqa,
)
from rxt.masks import causal_mask, key_padding_mask
from rxt.rope import RotaryEmbedding

SQA = AttentionConfig(dim=32, num_heads=8, num_query_heads=4, num_kv_heads=2)


def _brute(t, window, num_global, causal, q_offset=0, s=None):
    s = t if s is None else s
    out = torch.zeros(t, s, dtype=torch.bool)
    for i in range(t):
        p = i + q_offset
        for j in range(s):
            if causal and j > p:
                continue
            local = (0 <= p - j < window) if causal else abs(p - j) < window
            out[i, j] = local or p < num_global or j < num_global
    return out


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize(
    ("t", "window", "num_global"), [(13, 4, 0), (13, 4, 3), (10, 1, 2), (7, 20, 0), (9, 3, 9)]
)
def test_mask_position_by_position(causal, t, window, num_global):
    got = dense_mask(sliding_window_mask_mod(window, num_global, causal=causal), t, t, "cpu")[0, 0]
    assert torch.equal(got, _brute(t, window, num_global, causal))


def test_mask_with_query_offset_matches_brute_force():
    mod = sliding_window_mask_mod(3, 2, causal=True, q_offset=6)
    got = dense_mask(mod, 4, 10, "cpu")[0, 0]
    assert torch.equal(got, _brute(4, 3, 2, True, q_offset=6, s=10))


def _pair(backend="sdpa", window=64, num_global=0):
    torch.manual_seed(0)
    rope = RotaryEmbedding(SQA.head_dim, 128)
    ref = Attention(SQA, rope=rope, rope_mode="full").double()
    flex = FlexSQAAttention(
        SQA, rope=rope, rope_mode="full", window=window, num_global=num_global, backend=backend
    )
    flex.double().load_state_dict(ref.state_dict())
    return ref, flex


@pytest.mark.parametrize("causal", [True, False])
def test_whole_sequence_window_equals_full_sqa(causal):
    ref, flex = _pair(window=64)
    x = torch.randn(2, 19, 32, dtype=torch.float64)
    pos = torch.arange(19)
    torch.testing.assert_close(
        flex(x, positions=pos, causal=causal), ref(x, positions=pos, causal=causal), atol=1e-10, rtol=0
    )


def test_windowed_equals_sqa_with_explicit_mask():
    ref, flex = _pair(window=4, num_global=2)
    x = torch.randn(2, 15, 32, dtype=torch.float64)
    for causal in (True, False):
        pattern = _brute(15, 4, 2, causal)[None, None]
        torch.testing.assert_close(flex(x, causal=causal), ref(x, mask=pattern), atol=1e-10, rtol=0)


def test_padding_mask_is_intersected():
    ref, flex = _pair(window=3, num_global=1)
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    valid = torch.tensor([[1] * 12, [1] * 8 + [0] * 4], dtype=torch.bool)
    for causal, mask in ((True, causal_mask(valid, 12, x.device)), (False, key_padding_mask(valid))):
        want = ref(x, mask=mask & _brute(12, 3, 1, causal)[None, None])
        got = flex(x, mask=mask, causal=False)
        torch.testing.assert_close(got[0], want[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(got[1, :8], want[1, :8], atol=1e-10, rtol=0)


@pytest.mark.skipif(not FLEX_AVAILABLE, reason="no flex_attention in this torch")
@pytest.mark.parametrize("causal", [True, False])
def test_flex_path_equals_dense_fallback(causal):
    _, flex = _pair(window=5, num_global=3)
    flex = flex.float()
    torch.manual_seed(1)
    q = torch.randn(2, 4, 37, 4)
    k = torch.randn(2, 2, 37, 4)
    v = torch.randn(2, 2, 37, 4)
    try:
        got = flex.windowed_attention(q, k, v, causal=causal, path="flex")
    except Exception as exc:  # flex may be unsupported on this CPU build
        pytest.skip(f"flex_attention does not run here: {exc}")
    want = flex.windowed_attention(q, k, v, causal=causal, path="sdpa")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    valid = torch.ones(2, 37, dtype=torch.bool)
    valid[1, 30:] = False
    mask = key_padding_mask(valid)
    got = flex.windowed_attention(q, k, v, causal=causal, mask=mask, path="flex")
    want = flex.windowed_attention(q, k, v, causal=causal, mask=mask, path="sdpa")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reactive_decoder_with_flex_sqa_cache_matches_full_forward():
    from rxt.config import TransformerConfig
    from rxt.decoder import Decoder

    torch.manual_seed(2)
    cfg = TransformerConfig(
        vocab_size=50,
        dim=32,
        num_layers=2,
        num_heads=8,
        max_seq_len=32,
        self_attention=(4, 2),
        ffn_hidden_dim=64,
    )
    decoder = Decoder(cfg, with_memory=False).double().eval()
    ids = torch.randint(0, 50, (1, 12))
    dense = decoder(ids).logits
    assert use_flex_sqa(decoder, window=32, backend="sdpa") == 2  # whole-sequence window: unchanged model
    torch.testing.assert_close(decoder(ids).logits, dense, atol=1e-9, rtol=0)
    use_flex_sqa(decoder, window=3, num_global=2, backend="sdpa")  # already swapped: no-op
    for layer in decoder.layers:
        layer.self_attn.window, layer.self_attn.num_global = 3, 2
    full = decoder(ids).logits
    assert not torch.allclose(full, dense)
    cache = decoder.new_cache(1, 16, dtype=torch.float64)
    steps = [decoder(ids[:, :5], cache=cache).logits]
    for i in range(5, 12):
        steps.append(decoder(ids[:, i : i + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-9, rtol=0)


def test_cross_attention_passes_through():
    ref, flex = _pair(window=2)
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    ctx = torch.randn(1, 9, 32, dtype=torch.float64)
    torch.testing.assert_close(flex(x, ctx), ref(x, ctx), atol=1e-12, rtol=0)
    kv = ref.project_key_value(ctx)
    torch.testing.assert_close(flex(x, key_value=kv), ref(x, key_value=kv), atol=1e-12, rtol=0)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        FlexSQAAttention(SQA, window=0)
    with pytest.raises(ValueError):
        FlexSQAAttention(SQA, backend="cuda")


def test_reactive_model_with_flex_sqa_layers():
    """Encoder and memory-cross-attention decoder layers of an RxT take Flex-SQA self-attention."""
    from rxt.config import RxTConfig
    from rxt.model import RxT

    torch.manual_seed(3)
    cfg = RxTConfig(
        vocab_size=60, dim=32, num_layers=2, num_heads=8, max_seq_len=32, ffn_hidden_dim=64, stm_slots=6
    )
    model = RxT(cfg).double().eval()
    ids = torch.randint(0, 60, (2, 10))
    stm = model.initial_memory(2)
    encoded_before = model.encode(ids)
    logits_before = model(ids, stm).logits
    assert use_flex_sqa(model, window=32, backend="sdpa") == 4  # 2 encoder + 2 decoder layers
    torch.testing.assert_close(model.encode(ids), encoded_before, atol=1e-9, rtol=0)
    torch.testing.assert_close(model(ids, stm).logits, logits_before, atol=1e-9, rtol=0)
    for module in model.modules():
        if isinstance(module, FlexSQAAttention):
            module.window, module.num_global = 3, 1
    new_stm = model.update_memory(stm, ids)
    assert torch.isfinite(model(ids, new_stm).logits).all()
