"""FFN blocks against hand-written float64 maths, and config validation."""

from __future__ import annotations

import math

import pytest
import torch

from rxt.ffn import DenseFFN, FFNConfig, GatedFFN, build_ffn
from rxt.moe import MoEFeedForward


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x / (1.0 + torch.exp(-x))


def _gelu(x: torch.Tensor) -> torch.Tensor:
    # Exact (erf) GELU, the definition F.gelu implements by default.
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _relu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, x, torch.zeros_like(x))


_REF_ACT = {"silu": _silu, "gelu": _gelu, "relu": _relu}


def _linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
@pytest.mark.parametrize("bias", [False, True])
def test_gated_ffn_matches_hand_written_glu(activation: str, bias: bool) -> None:
    torch.manual_seed(0)
    cfg = FFNConfig(dim=8, hidden_dim=12, activation=activation, gated=True, bias=bias)
    ffn = GatedFFN(cfg).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    act = _REF_ACT[activation]
    # SwiGLU / GeGLU / ReGLU: down(act(x W_gate) * (x W_up)).
    expected = _linear(act(_linear(x, ffn.gate)) * _linear(x, ffn.up), ffn.down)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("activation", ["silu", "gelu", "relu"])
def test_dense_ffn_matches_hand_written_mlp(activation: str) -> None:
    torch.manual_seed(1)
    cfg = FFNConfig(dim=6, hidden_dim=10, activation=activation, gated=False, bias=True)
    ffn = DenseFFN(cfg).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    expected = _linear(_REF_ACT[activation](_linear(x, ffn.up)), ffn.down)
    torch.testing.assert_close(ffn(x), expected, rtol=1e-12, atol=1e-12)


def test_gate_is_not_symmetric_in_gate_and_up() -> None:
    # Swapping gate and up must change the output; guards against an implementation that ignores one of them.
    torch.manual_seed(2)
    ffn = GatedFFN(FFNConfig(dim=4, hidden_dim=6)).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    before = ffn(x)
    with torch.no_grad():
        w = ffn.gate.weight.clone()
        ffn.gate.weight.copy_(ffn.up.weight)
        ffn.up.weight.copy_(w)
    assert not torch.allclose(before, ffn(x))


def test_dropout_only_in_training() -> None:
    torch.manual_seed(3)
    ffn = DenseFFN(FFNConfig(dim=4, hidden_dim=64, gated=False, dropout=0.5))
    x = torch.randn(8, 4)
    ffn.eval()
    torch.testing.assert_close(ffn(x), ffn(x))
    ffn.train()
    assert not torch.allclose(ffn(x), ffn(x))


def test_build_ffn_picks_the_kind() -> None:
    assert type(build_ffn(FFNConfig(dim=4, hidden_dim=8))) is GatedFFN
    assert type(build_ffn(FFNConfig(dim=4, hidden_dim=8, gated=False))) is DenseFFN
    moe = build_ffn(FFNConfig(dim=4, hidden_dim=8, num_experts=3, top_k=2))
    assert isinstance(moe, MoEFeedForward)
    assert moe.num_experts == 3 and moe.top_k == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 0}, "FFNConfig.dim=0 must be >= 1"),
        ({"hidden_dim": -1}, "FFNConfig.hidden_dim=-1 must be >= 1"),
        ({"activation": "tanh"}, "FFNConfig.activation='tanh' must be one of"),
        ({"dropout": 1.0}, "FFNConfig.dropout=1.0 must be in [0, 1)"),
        ({"dropout": -0.1}, "FFNConfig.dropout=-0.1 must be in [0, 1)"),
        ({"num_experts": -1}, "FFNConfig.num_experts=-1 must be >= 0"),
        ({"num_experts": 2, "top_k": 0}, "FFNConfig.top_k=0 must be >= 1"),
        ({"num_experts": 2, "top_k": 3}, "FFNConfig.top_k=3 must be <= num_experts=2"),
        ({"balance_loss_weight": -0.5}, "FFNConfig.balance_loss_weight=-0.5 must be >= 0"),
    ],
)
def test_bad_config_names_field_and_limit(kwargs: dict, message: str) -> None:
    base = {"dim": 4, "hidden_dim": 8}
    with pytest.raises(ValueError) as info:
        FFNConfig(**{**base, **kwargs})
    assert message in str(info.value)


def test_top_k_is_not_checked_against_zero_experts() -> None:
    # Dense configs ignore top_k; a leftover top_k=2 must not make a dense config invalid.
    assert not FFNConfig(dim=4, hidden_dim=8, top_k=2).is_moe
