import dataclasses
import math

import pytest
import torch

from rxt.attention_config import AttentionConfig
from rxt.gates import GateConfig, ResidualGate
from rxt.memory_attention import (
    MEMORY_ATTENTION_VARIANTS,
    GroupedSelfInterlayerMemoryAttention,
    InterlayerMemoryAttention,
    MemoryAttentionConfig,
    MemoryAttentionNetwork,
    SelfInterlayerMemoryAttention,
    SelfMemoryAttention,
    SimpleMemoryAttention,
    build_memory_attention,
)
from rxt.rope import RotaryEmbedding

L, S, D, H, T = 4, 5, 16, 4, 6
BASE = 10_000.0
NAMES = ("simple", "self", "interlayer", "self-interlayer", "grouped-self-interlayer")
CLASSES = {
    "simple": SimpleMemoryAttention,
    "self": SelfMemoryAttention,
    "interlayer": InterlayerMemoryAttention,
    "self-interlayer": SelfInterlayerMemoryAttention,
    "grouped-self-interlayer": GroupedSelfInterlayerMemoryAttention,
}


def _cfg(
    variant: str, *, num_layers: int = L, kv_heads: int | None = None, gate: GateConfig | None = None, **kw
):
    att = AttentionConfig(dim=D, num_heads=H, num_kv_heads=kv_heads)
    return MemoryAttentionConfig(
        num_layers=num_layers, num_slots=S, attention=att, variant=variant, gate=gate or GateConfig(), **kw
    )


def _net(variant: str, seed: int = 0, **kw) -> MemoryAttentionNetwork:
    torch.manual_seed(seed)
    net = build_memory_attention(_cfg(variant, **kw), RotaryEmbedding(D // H, 64, BASE))
    with torch.no_grad():  # move norms and gates off their init so every parameter matters
        g = torch.Generator().manual_seed(seed + 100)
        for name, p in net.named_parameters():
            if "norm" in name or "gate" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return net.eval()


def _data(batch: int, tokens: int = T, seed: int = 1, num_layers: int = L):
    g = torch.Generator().manual_seed(seed)
    stm = torch.randn(num_layers, batch, S, D, generator=g)
    enc = torch.randn(num_layers, batch, tokens, D, generator=g)
    return stm, enc


def test_registry_names_and_classes() -> None:
    assert tuple(sorted(MEMORY_ATTENTION_VARIANTS)) == tuple(sorted(NAMES))
    classes = set()
    for name in NAMES:
        net = _net(name)
        assert type(net) is MEMORY_ATTENTION_VARIANTS[name] is CLASSES[name]
        assert isinstance(net, MemoryAttentionNetwork) and type(net).variant_name == name
        classes.add(type(net))
    assert len(classes) == len(NAMES)
    default = MemoryAttentionConfig(num_layers=1, num_slots=1, attention=AttentionConfig(8, 2))
    assert default.variant == "interlayer"


def test_unknown_variant_lists_known_names() -> None:
    cfg = _cfg("simple")
    cfg.variant = "nope"
    with pytest.raises(ValueError, match="nope") as err:
        build_memory_attention(cfg, RotaryEmbedding(D // H, 64))
    for name in NAMES:
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError, match="MemoryAttentionConfig.variant='nope'"):
        _cfg("nope")


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_gradients_batch_3(name: str) -> None:
    net = _net(name).train()
    stm, enc = _data(3)
    stm.requires_grad_()
    enc.requires_grad_()
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, 4:] = False
    out = net(stm, enc, valid)
    assert out.shape == (L, 3, S, D) and torch.isfinite(out).all()
    assert not torch.allclose(out, stm)
    (out**2).sum().backward()
    assert stm.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every STM layer
    assert enc.grad.abs().sum(dim=(1, 2, 3)).min() > 0  # every encoder layer
    assert (enc.grad[:, 1, 4:] == 0).all()  # padded tokens get no gradient
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent(name: str) -> None:
    """The batched result equals each row computed alone (no mixing over the batch, no wrong expand)."""
    net = _net(name)
    stm, enc = _data(3)
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[2, 3:] = False
    out = net(stm, enc, valid)
    for b in range(3):
        alone = net(stm[:, b : b + 1], enc[:, b : b + 1], valid[b : b + 1])
        torch.testing.assert_close(out[:, b : b + 1], alone, rtol=1e-5, atol=1e-5)
    # a single-row STM is broadcast to the encoded batch
    torch.testing.assert_close(net(stm[:, :1], enc), net(stm[:, :1].expand(-1, 3, -1, -1), enc))


def _zero_all_gates(net: torch.nn.Module) -> int:
    count = 0
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, ResidualGate):
                count += 1
                if m.cfg.kind == "static":
                    m.weight.fill_(-1e4)
                elif m.cfg.kind == "elementwise":
                    m.weight.zero_()
                    m.bias.fill_(-1e4)
                else:
                    m.linear.weight.zero_()
                    m.linear.bias.fill_(-1e4)
    return count


@pytest.mark.parametrize("kind", ["static", "elementwise", "linear"])
@pytest.mark.parametrize("name", NAMES)
def test_zero_gates_leave_stm_unchanged(name: str, kind: str) -> None:
    net = _net(name, gate=GateConfig(kind=kind))
    assert _zero_all_gates(net) >= L
    stm, enc = _data(3)
    torch.testing.assert_close(net(stm, enc), stm, rtol=0, atol=1e-6)


# -- float64 reference -------------------------------------------------------------------------------------
def _rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _ref_attention(attn, x, ctx, valid, rope_keys: bool):
    b, tq, _ = x.shape
    tk = ctx.shape[1]
    hq, hkv = attn.cfg.num_query_heads, attn.cfg.num_kv_heads
    d = D // H
    q = (x @ attn.q_proj.weight.T).view(b, tq, hq, d).transpose(1, 2)
    k = (ctx @ attn.k_proj.weight.T).view(b, tk, hkv, d).transpose(1, 2)
    v = (ctx @ attn.v_proj.weight.T).view(b, tk, hkv, d).transpose(1, 2)
    if rope_keys:
        inv = torch.tensor([BASE ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
        ang = torch.arange(tk, dtype=torch.float64)[:, None] * inv[None, :]
        cos, sin = torch.cos(ang), torch.sin(ang)
        k1, k2 = k[..., : d // 2], k[..., d // 2 :]
        k = torch.cat([k1 * cos - k2 * sin, k1 * sin + k2 * cos], dim=-1)
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    if valid is not None:
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(b, tq, hq * d) @ attn.o_proj.weight.T


def _ref_gate(gate, x, u):  # elementwise sigmoid gate
    g = torch.sigmoid(gate.weight * (x + u).mean(-1, keepdim=True) + gate.bias)
    return (1 - g) * x + g * u


def _ref_main_step(net, x, enc, valid):
    eps = net.cfg.norm_eps
    out = []
    for layer in range(net.cfg.num_layers):
        q = _rms(x[layer], net.query_norm[layer].weight, eps)
        kv = _rms(enc[layer], net.input_norm[layer].weight, eps)
        u = _ref_attention(net.attention[layer], q, kv, valid, rope_keys=True)
        out.append(_ref_gate(net.gate[layer], x[layer], u))
    return torch.stack(out)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_simple_matches_float64_reference(kv_heads: int | None) -> None:
    net = _net("simple", kv_heads=kv_heads).double()
    stm, enc = (t.double() for t in _data(3))
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[0, 2:] = False
    valid[2, 5:] = False
    out = net(stm, enc, valid)
    torch.testing.assert_close(out, _ref_main_step(net, stm, enc, valid), rtol=0, atol=1e-6)
    # keys are rotated, queries are not: rotating the reference's queries too would change the answer
    assert not torch.allclose(out, _ref_main_step_without_rope(net, stm, enc, valid), atol=1e-4)


def _ref_main_step_without_rope(net, x, enc, valid):
    eps = net.cfg.norm_eps
    out = []
    for layer in range(net.cfg.num_layers):
        q = _rms(x[layer], net.query_norm[layer].weight, eps)
        kv = _rms(enc[layer], net.input_norm[layer].weight, eps)
        u = _ref_attention(net.attention[layer], q, kv, valid, rope_keys=False)
        out.append(_ref_gate(net.gate[layer], x[layer], u))
    return torch.stack(out)


def test_interlayer_matches_float64_reference() -> None:
    net = _net("interlayer").double()
    stm, enc = (t.double() for t in _data(3))
    eps = net.cfg.norm_eps
    mean = stm.mean(dim=0)  # over layers
    x = []
    for layer in range(L):
        q = _rms(stm[layer], net.pre_query_norm[layer].weight, eps)
        kv = _rms(mean, net.pre_key_norm[layer].weight, eps)
        u = _ref_attention(net.pre_attention[layer], q, kv, None, rope_keys=False)
        x.append(_ref_gate(net.pre_gate[layer], stm[layer], u))
    expected = _ref_main_step(net, torch.stack(x), enc, None)
    torch.testing.assert_close(net(stm, enc), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_padding_invariance(name: str) -> None:
    net = _net(name)
    stm, enc = _data(3)
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1, 3:] = False
    out = net(stm, enc, valid)
    junk = 100 * torch.randn(L, 3, 4, D)
    longer = torch.cat([enc, junk], dim=2)
    longer_valid = torch.cat([valid, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(net(stm, longer, longer_valid), out, rtol=0, atol=1e-6)
    # changing a padded token inside the sequence changes nothing either
    enc2 = enc.clone()
    enc2[:, 1, 4] = 1e3
    torch.testing.assert_close(net(stm, enc2, valid), out, rtol=0, atol=1e-6)
    # all-True key_valid equals no mask
    torch.testing.assert_close(net(stm, enc, torch.ones(3, T, dtype=torch.bool)), net(stm, enc))


@pytest.mark.parametrize("name", NAMES)
def test_fully_padded_row_is_finite_and_keeps_memory(name: str) -> None:
    net = _net(name).train()
    stm, enc = _data(3)
    stm.requires_grad_()
    valid = torch.ones(3, T, dtype=torch.bool)
    valid[1] = False
    out = net(stm, enc, valid)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 1], stm[:, 1], rtol=0, atol=0)
    torch.testing.assert_close(out[:, [0, 2]], net(stm[:, [0, 2]], enc[:, [0, 2]], valid[[0, 2]]))
    out.sum().backward()
    assert torch.isfinite(stm.grad).all()
    for p in net.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_grouped_mean_stays_within_groups() -> None:
    stm, enc = _data(2)
    perturbed = stm.clone()
    perturbed[3] += 1.0  # layer 3 is in the second group of (0, 1), (2, 3)
    grouped = _net("grouped-self-interlayer", num_groups=2)
    a, b = grouped(stm, enc), grouped(perturbed, enc)
    torch.testing.assert_close(a[:2], b[:2], rtol=0, atol=0)
    assert not torch.allclose(a[2], b[2])
    full = _net("self-interlayer")
    assert not torch.allclose(full(stm, enc)[0], full(perturbed, enc)[0])  # mean over all layers


def test_grouped_with_one_group_equals_self_interlayer() -> None:
    full = _net("self-interlayer")
    grouped = build_memory_attention(
        _cfg("grouped-self-interlayer", num_groups=1), RotaryEmbedding(D // H, 64)
    )
    grouped.load_state_dict(full.state_dict())
    stm, enc = _data(2)
    torch.testing.assert_close(grouped.eval()(stm, enc), full(stm, enc), rtol=0, atol=0)


def test_grouped_needs_divisible_layers() -> None:
    with pytest.raises(ValueError, match=r"num_groups=3 must divide num_layers=4"):
        build_memory_attention(_cfg("grouped-self-interlayer", num_groups=3), RotaryEmbedding(D // H, 64))
    _cfg("interlayer", num_groups=3)  # irrelevant to the other variants


def test_shape_errors_name_both_shapes() -> None:
    net = _net("simple")
    stm, enc = _data(2)
    with pytest.raises(ValueError, match=r"4 layers.*stm has 4 layers.*encoded has 3 layers"):
        net(stm, enc[:3])
    with pytest.raises(ValueError, match=r"stm has 3 layers"):
        net(stm[:3], enc)
    with pytest.raises(ValueError, match=r"stm batch 2 .*encoded batch 3"):
        net(stm, torch.cat([enc, enc[:, :1]], dim=1))
    with pytest.raises(ValueError, match=r"key_valid must be \(B, T\) = \(2, 6\)"):
        net(stm, enc, torch.ones(2, T + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(4, B, 5, 16\)"):
        net(stm[:, :, :3], enc)
    with pytest.raises(ValueError, match="MemoryAttentionConfig.num_layers=0"):
        dataclasses.replace(_cfg("simple"), num_layers=0)
