"""The layer-batched memory attention (`rxt.memory_attention_stacked`) equals the layer loop, float64."""

import dataclasses
import itertools

import pytest
import torch

from rxt.attention_config import AttentionConfig
from rxt.gates import GateConfig
from rxt.memory_attention import MemoryAttentionConfig, build_memory_attention
from rxt.rope import RotaryEmbedding

L, S, D, H, B, T = 4, 5, 16, 4, 3, 7
VARIANTS = ("simple", "self", "interlayer", "self-interlayer", "grouped-self-interlayer")
GATES = [GateConfig(kind=k, activation=a, per=p)
         for k, a, p in itertools.product(("static", "elementwise", "linear"), ("sigmoid", "tanh"), ("slot", "layer"))]


def _net(variant: str, gate: GateConfig, attention: AttentionConfig | None = None, rope: bool = True):
    torch.manual_seed(0)
    cfg = MemoryAttentionConfig(num_layers=L, num_slots=S, attention=attention or AttentionConfig(dim=D, num_heads=H),
                                variant=variant, gate=gate)
    net = build_memory_attention(cfg, RotaryEmbedding(D // H, 64) if rope else None).double()
    with torch.no_grad():  # every layer's own weights: a wrong layer pairing shows
        g = torch.Generator().manual_seed(1)
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def _data(batch: int = B):
    g = torch.Generator().manual_seed(2)
    stm = torch.randn(L, batch, S, D, generator=g, dtype=torch.float64)
    enc = torch.randn(L, B, T, D, generator=g, dtype=torch.float64)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, 4:] = False  # padding
    valid[2] = False  # a row with no token keeps its memory
    return stm, enc, valid


def _check(net, stm, enc, valid) -> None:
    assert net.stackable()
    stm = stm.clone().requires_grad_(True)
    enc = enc.clone().requires_grad_(True)
    results = []
    for run in (net.forward, net.layerwise_forward):
        net.zero_grad(set_to_none=True)
        stm.grad = enc.grad = None
        out = run(stm, enc, valid)
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        results.append((out.detach(), stm.grad.clone(), enc.grad.clone(),
                        {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}))
    (out, gs, ge, gp), (ref, rs, re, rp) = results
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(gs, rs, rtol=0, atol=1e-11)
    torch.testing.assert_close(ge, re, rtol=0, atol=1e-11)
    assert gp.keys() == rp.keys() and len(gp) == len(list(net.parameters()))
    for name in gp:
        torch.testing.assert_close(gp[name], rp[name], rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("gate", GATES, ids=lambda g: f"{g.kind}-{g.activation}-{g.per}")
def test_stacked_equals_layer_loop(variant: str, gate: GateConfig) -> None:
    _check(_net(variant, gate), *_data())


@pytest.mark.parametrize("variant", VARIANTS)
def test_stacked_equals_layer_loop_gqa_sqa_bias_no_rope_broadcast(variant: str) -> None:
    attention = AttentionConfig(dim=D, num_heads=H, num_query_heads=2, num_kv_heads=1, bias=True)
    stm, enc, valid = _data(batch=1)  # a (L, 1, S, D) STM broadcast to the batch
    _check(_net(variant, GateConfig(), attention, rope=False), stm, enc, valid)
    _check(_net(variant, GateConfig(), attention), stm, enc, None)


def test_stacked_path_is_the_default_and_flash_falls_back() -> None:
    net = _net("interlayer", GateConfig())
    assert net.stackable()
    stm, enc, valid = _data()
    calls = []
    original = net.attention[0].forward
    net.attention[0].forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    net(stm, enc, valid)
    assert not calls  # the stacked path does not call the per-layer modules
    net.attention[0].cfg = dataclasses.replace(net.attention[0].cfg, backend="flash")
    assert not net.stackable()
    net(stm, enc, valid)
    assert calls  # flash-attn layers run one by one


def test_key_bias_equals_key_valid_on_rows_with_tokens() -> None:
    net = _net("interlayer", GateConfig())
    stm, enc, valid = _data()
    bias = net.stacked_key_bias(valid, torch.float64)
    assert bias.shape == (L * B, 1, 1, T)
    out = net(stm, enc, key_bias=bias)
    ref = net.layerwise_forward(stm, enc, valid)
    torch.testing.assert_close(out[:, :2], ref[:, :2], rtol=0, atol=1e-12)
    # the row without tokens is not kept here (the caller keeps it): it attended to every key
    torch.testing.assert_close(out[:, 2], net.layerwise_forward(stm, enc)[:, 2], rtol=0, atol=1e-12)
    # over leading (turn) dims at once, as per turn
    turns = torch.stack([valid, valid.roll(1, dims=0)])
    torch.testing.assert_close(net.stacked_key_bias(turns, torch.float64)[1],
                               net.stacked_key_bias(turns[1], torch.float64), rtol=0, atol=0)


def test_chain_with_weights_stacked_once_equals_per_call() -> None:
    net = _net("self-interlayer", GateConfig(kind="linear"))
    stm0, enc, valid = _data()
    grads = []
    for once in (True, False):
        net.zero_grad(set_to_none=True)
        weights = net.stacked_weights() if once else None
        stm = stm0
        for turn in range(3):
            stm = net(stm, enc.roll(turn, dims=2), valid, weights=weights)
        stm.pow(2).sum().backward()
        grads.append((stm.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}))
    (a, ga), (b, gb) = grads
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=0, atol=1e-10, msg=name)


def test_key_bias_errors_name_the_problem() -> None:
    net = _net("simple", GateConfig())
    stm, enc, valid = _data()
    bias = net.stacked_key_bias(valid, torch.float64)
    with pytest.raises(ValueError, match="key_bias replaces key_valid"):
        net(stm, enc, valid, key_bias=bias)
    with pytest.raises(ValueError, match=r"key_bias must be \(L \* B, 1, 1, T\)"):
        net(stm, enc, key_bias=bias[:B])


def test_a_hook_on_a_layer_module_gets_the_layer_loop() -> None:
    net = _net("interlayer", GateConfig())
    stm, enc, valid = _data()
    seen = []
    handle = net.gate[1].register_forward_hook(lambda module, inputs, output: seen.append(output))
    assert not net.stackable()
    out = net(stm, enc, valid)
    assert len(seen) == 1
    handle.remove()
    assert net.stackable()
    torch.testing.assert_close(net(stm, enc, valid), out, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["static", "elementwise", "linear"])
def test_stacked_under_bf16_autocast_matches_the_layer_loop(kind: str) -> None:
    """The GPU recipe's setting on the CPU: same output dtype as the layer loop, values within bf16 rounding, and
    a precomputed key bias / key-value pair in the autocast dtype works."""
    net = _net("interlayer", GateConfig(kind=kind)).float()
    stm, enc, valid = (t.float() if t.is_floating_point() else t for t in _data())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(stm, enc, valid)
        ref = net.layerwise_forward(stm, enc, valid)
        weights = net.stacked_weights()
        keys, values = net.stacked_key_value(enc.unsqueeze(1), weights)
        chained = net(stm, enc, weights=weights, key_bias=net.stacked_key_bias(valid, torch.bfloat16),
                      key_value=(keys[0], values[0]))
    assert out.dtype == ref.dtype == chained.dtype
    torch.testing.assert_close(out, ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(chained[:, :2], out[:, :2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", ["simple", "self", "interlayer", "self-interlayer"])
def test_float32_memory_into_a_float64_network_as_the_weighted_norms_promote(variant: str) -> None:
    """The norms' weights are folded into the projections, so the normalised input takes the dtype the weighted
    norm gave it: a float32 STM into a float64 network runs in float64 (as before the fold, what the IMPO update's
    float64 tests feed it), equal to the same STM given in float64 within float32 rounding (the normalisation
    itself runs at the input's precision, as it did before the fold)."""
    net = _net(variant, GateConfig())
    stm, enc, valid = _data()
    out = net(stm.float(), enc, valid)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, net(stm.float().double(), enc, valid), rtol=0, atol=1e-6)


def test_decoder_memory_projection_folds_the_norm_exactly() -> None:
    """`DecoderLayer.project_memory` (the memory norm's weight folded into one key/value matmul) equals the norm
    module followed by the two projections, float64, values and gradients, and promotes a float32 STM alike."""
    from rxt.config import RxTConfig
    from rxt.model import RxT

    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny")).double()
    layer = model.decoder.layers[0]
    with torch.no_grad():
        layer.memory_norm.weight.add_(torch.randn_like(layer.memory_norm.weight))
    stm = torch.randn(3, model.config.stm_slots, model.config.dim, dtype=torch.float64, requires_grad=True)
    attn = layer.memory_cross_attn
    results = []
    for fn in (layer.project_memory, lambda m: attn.project_key_value(layer.memory_norm(m))):
        layer.zero_grad(set_to_none=True)
        stm.grad = None
        k, v = fn(stm)
        (k.sum() + (v * v).sum()).backward()
        results.append((k.detach(), v.detach(), stm.grad.clone(), layer.memory_norm.weight.grad.clone(),
                        attn.k_proj.weight.grad.clone(), attn.v_proj.weight.grad.clone()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    k32, _ = layer.project_memory(stm.detach().float())
    assert k32.dtype == torch.float64
