import math

import pytest
import torch

from rxt.gates import GateConfig, ResidualGate

B, S, D = 3, 5, 8
KINDS = ("static", "elementwise", "linear")


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, D, generator=g), torch.randn(B, S, D, generator=g)


def _gate(kind: str, activation: str = "sigmoid", per: str = "slot", **kw) -> ResidualGate:
    torch.manual_seed(0)  # nn.Linear's default init draws from the global generator
    gate = ResidualGate(GateConfig(kind=kind, activation=activation, per=per, **kw), S, D)
    with torch.no_grad():  # move off the init so every parameter matters (small: tanh must not saturate)
        g = torch.Generator().manual_seed(1)
        for p in gate.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return gate


@pytest.mark.parametrize("kind", KINDS)
def test_sigmoid_is_convex_combination_and_matches_formula(kind: str) -> None:
    stm, upd = _inputs()
    gate = _gate(kind)
    out = gate(stm, upd)
    g = gate.gate_value(stm, upd)
    assert ((g > 0) & (g < 1)).all()
    torch.testing.assert_close(out, (1 - g) * stm + g * upd, rtol=0, atol=1e-6)
    lo, hi = torch.minimum(stm, upd), torch.maximum(stm, upd)
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()
    assert not torch.allclose(out, stm) and not torch.allclose(out, upd)


@pytest.mark.parametrize("kind", KINDS)
def test_tanh_formula_as_written(kind: str) -> None:
    stm, upd = _inputs()
    gate = _gate(kind, activation="tanh")
    out = gate(stm, upd)
    g = gate.gate_value(stm, upd)
    assert (g.abs() < 1).all() and (g != 0).any()
    torch.testing.assert_close(out, (1 - g) * stm + (1 + g) * upd, rtol=0, atol=1e-6)


def test_tanh_static_default_init_is_exact_plain_residual() -> None:
    cfg = GateConfig(kind="static", activation="tanh")
    assert cfg.init_bias == 0.0
    gate = ResidualGate(cfg, S, D)
    stm, upd = _inputs()
    assert (gate.gate_value(stm, upd) == 0).all()
    torch.testing.assert_close(gate(stm, upd), stm + upd, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_sigmoid_update_equal_to_stm_leaves_it_unchanged(kind: str) -> None:
    stm, _ = _inputs()
    gate = _gate(kind)
    torch.testing.assert_close(gate(stm, stm.clone()), stm, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_sigmoid_gate_forced_to_zero_keeps_stm(kind: str) -> None:
    stm, upd = _inputs()
    gate = ResidualGate(GateConfig(kind=kind), S, D)
    with torch.no_grad():
        if kind == "static":
            gate.weight.fill_(-1e4)
        elif kind == "elementwise":
            gate.weight.zero_()
            gate.bias.fill_(-1e4)
        else:
            gate.linear.weight.zero_()
            gate.linear.bias.fill_(-1e4)
    assert (gate.gate_value(stm, upd) == 0).all()
    torch.testing.assert_close(gate(stm, upd), stm, rtol=0, atol=1e-6)


def test_default_init_keeps_most_of_the_memory() -> None:
    cfg = GateConfig()
    assert (cfg.kind, cfg.activation, cfg.per, cfg.init_bias) == ("elementwise", "sigmoid", "slot", -2.0)
    stm, upd = _inputs()
    for kind in ("static", "elementwise"):
        g = ResidualGate(GateConfig(kind=kind), S, D).gate_value(stm, upd)
        torch.testing.assert_close(g, torch.full((B, S, 1), 1 / (1 + math.exp(2.0))))
    assert GateConfig(init_bias=1.5).init_bias == 1.5


@pytest.mark.parametrize(
    "kind,shape", [("static", (B, S, 1)), ("elementwise", (B, S, 1)), ("linear", (B, S, D))]
)
def test_gate_value_shapes(kind: str, shape: tuple[int, ...]) -> None:
    stm, upd = _inputs()
    assert tuple(_gate(kind).gate_value(stm, upd).shape) == shape


def test_per_slot_vs_per_layer_parameter_shapes() -> None:
    static_slot = ResidualGate(GateConfig(kind="static", per="slot"), S, D)
    static_layer = ResidualGate(GateConfig(kind="static", per="layer"), S, D)
    assert static_slot.weight.shape == (S, 1) and static_layer.weight.shape == (1, 1)
    elem_slot = ResidualGate(GateConfig(kind="elementwise", per="slot"), S, D)
    elem_layer = ResidualGate(GateConfig(kind="elementwise", per="layer"), S, D)
    assert elem_slot.weight.shape == elem_slot.bias.shape == (S, 1)
    assert elem_layer.weight.shape == elem_layer.bias.shape == (1, 1)
    assert ResidualGate(GateConfig(kind="linear"), S, D).linear.weight.shape == (D, D)
    stm, upd = _inputs()
    g_layer = _gate("static", per="layer").gate_value(stm, upd)
    assert (g_layer == g_layer[0, 0, 0]).all()  # one value for the whole layer
    g_slot = _gate("static", per="slot").gate_value(stm, upd)
    assert g_slot[0, :, 0].unique().numel() == S  # a value per slot, shared by the batch rows
    assert (g_slot == g_slot[:1]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_gate_parameters(kind: str) -> None:
    stm, upd = _inputs()
    gate = _gate(kind)
    (gate(stm, upd) ** 2).sum().backward()
    for name, p in gate.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"kind": "dense"}, "kind"),
        ({"activation": "relu"}, "activation"),
        ({"per": "batch"}, "per"),
        ({"init_bias": float("nan")}, "init_bias"),
    ],
)
def test_bad_config_names_field_and_choices(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"GateConfig.{field}") as err:
        GateConfig(**kwargs)
    if field == "kind":
        assert "static" in str(err.value) and "elementwise" in str(err.value) and "linear" in str(err.value)
    if field == "activation":
        assert "sigmoid" in str(err.value) and "tanh" in str(err.value)
    if field == "per":
        assert "slot" in str(err.value) and "layer" in str(err.value)


def test_shape_errors() -> None:
    gate = ResidualGate(GateConfig(), S, D)
    stm, upd = _inputs()
    with pytest.raises(ValueError, match="must have one shape"):
        gate(stm, upd[:, :-1])
    with pytest.raises(ValueError, match=r"\(\.\.\., 5, 8\)"):
        gate(stm[:, :-1], upd[:, :-1])
    with pytest.raises(ValueError, match="num_slots"):
        ResidualGate(GateConfig(), 0, D)
