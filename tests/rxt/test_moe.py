"""Mixture of experts against a naive per-token float64 reference, the balancing loss, and aux-loss collection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rxt.aux_loss import clear_aux_loss, collect_aux_loss
from rxt.ffn import DenseFFN, FFNConfig, GatedFFN
from rxt.moe import MoEFeedForward


def _cfg(**kwargs) -> FFNConfig:
    base = {"dim": 6, "hidden_dim": 10, "num_experts": 4, "top_k": 2}
    return FFNConfig(**{**base, **kwargs})


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "silu":
        return x / (1.0 + torch.exp(-x))
    if name == "gelu":
        return 0.5 * x * (1.0 + torch.erf(x / 2.0**0.5))
    return x.clamp(min=0)


def _reference_expert(moe: MoEFeedForward, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e on one token x (D,), written from the weights with plain matrix-vector products."""
    cfg = moe.cfg

    def lin(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        y = w[e] @ x
        return y if b is None else y + b[e]

    up = lin(moe.up_weight, moe.up_bias)
    hidden = (
        _act(cfg.activation, lin(moe.gate_weight, moe.gate_bias)) * up
        if cfg.gated
        else _act(cfg.activation, up)
    )
    y = moe.down_weight[e] @ hidden
    return y if moe.down_bias is None else y + moe.down_bias[e]


def _reference_routing(
    moe: MoEFeedForward, x: torch.Tensor
) -> tuple[torch.Tensor, list[list[int]], list[list[float]]]:
    """Router probabilities (N, E) and, per token, its top-k expert ids and (renormalised) weights."""
    probs = torch.exp(x @ moe.router.weight.T)
    probs = probs / probs.sum(-1, keepdim=True)
    ids, weights = [], []
    for row in probs.tolist():
        chosen = sorted(range(len(row)), key=lambda i: -row[i])[: moe.top_k]
        w = [row[i] for i in chosen]
        if moe.cfg.renormalize_topk:
            w = [v / sum(w) for v in w]
        ids.append(chosen)
        weights.append(w)
    return probs, ids, weights


def _reference_forward(moe: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    tokens = x.reshape(-1, x.shape[-1])
    _, ids, weights = _reference_routing(moe, tokens)
    out = torch.zeros_like(tokens)
    for n in range(tokens.shape[0]):
        for e, w in zip(ids[n], weights[n]):
            out[n] += w * _reference_expert(moe, e, tokens[n])
    return out.reshape(x.shape)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_one_expert_top1_equals_dense_ffn(gated: bool, bias: bool) -> None:
    torch.manual_seed(0)
    dense_cfg = FFNConfig(dim=6, hidden_dim=10, gated=gated, bias=bias)
    dense = GatedFFN(dense_cfg) if gated else DenseFFN(dense_cfg)
    moe = MoEFeedForward(FFNConfig(dim=6, hidden_dim=10, gated=gated, bias=bias, num_experts=1, top_k=1))
    moe.load_expert_(0, dense)
    x = torch.randn(2, 7, 6)
    torch.testing.assert_close(moe(x), dense(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("renormalize", [True, False])
def test_matches_naive_per_token_reference(gated: bool, bias: bool, renormalize: bool) -> None:
    torch.manual_seed(1)
    moe = MoEFeedForward(
        _cfg(gated=gated, bias=bias, renormalize_topk=renormalize, activation="gelu")
    ).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)  # leading dims (3, 5) are flattened and restored
    out = moe(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, _reference_forward(moe, x), rtol=1e-12, atol=1e-12)


def test_renormalised_topk_weights_sum_to_one() -> None:
    # With every expert equal to the same FFN, a renormalised mixture must equal that FFN exactly.
    torch.manual_seed(2)
    dense = GatedFFN(FFNConfig(dim=6, hidden_dim=10)).double()
    moe = MoEFeedForward(_cfg()).double()
    for e in range(4):
        moe.load_expert_(e, dense)
    x = torch.randn(9, 6, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense(x), rtol=1e-12, atol=1e-12)


def test_balance_loss_matches_formula() -> None:
    torch.manual_seed(3)
    cfg = _cfg(balance_loss_weight=0.3)
    moe = MoEFeedForward(cfg).double()
    x = torch.randn(11, 6, dtype=torch.float64)
    moe(x)
    probs, ids, _ = _reference_routing(moe, x)
    n, k, e = x.shape[0], cfg.top_k, cfg.num_experts
    fraction = [sum(row.count(i) for row in ids) / (n * k) for i in range(e)]
    mean_prob = [probs[:, i].mean().item() for i in range(e)]
    expected = cfg.balance_loss_weight * e * sum(f * p for f, p in zip(fraction, mean_prob))
    assert moe.aux_loss is not None and moe.aux_loss.dim() == 0
    assert moe.aux_loss.item() == pytest.approx(expected, rel=1e-12)


def test_uniform_router_gives_loss_exactly_weight() -> None:
    # A zero router gives p_e = 1/E for every token, so E * sum_e f_e / E = sum_e f_e = 1.
    cfg = _cfg(balance_loss_weight=0.01)
    moe = MoEFeedForward(cfg).double()
    with torch.no_grad():
        moe.router.weight.zero_()
    moe(torch.randn(8, 6, dtype=torch.float64))
    assert moe.aux_loss.item() == 0.01


def test_collapsed_router_gives_loss_e_times_weight() -> None:
    # All tokens to expert 0 with probability ~1 and top-1: f_0 = 1, P_0 ~ 1, loss ~ E.
    moe = MoEFeedForward(_cfg(top_k=1, balance_loss_weight=1.0)).double()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 1e3
    x = torch.randn(8, 6, dtype=torch.float64).abs() + 0.1  # x_0 > 0 so expert 0 wins by a mile
    moe(x)
    assert moe.aux_loss.item() == pytest.approx(4.0, rel=1e-9)


def test_gradients_reach_router_and_experts() -> None:
    torch.manual_seed(4)
    moe = MoEFeedForward(_cfg(bias=True))
    x = torch.randn(64, 6, requires_grad=True)
    moe(x).square().sum().backward()
    # The task loss alone must train the router (through the renormalised top-2 weights).
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name in ("up_weight", "gate_weight", "down_weight", "up_bias", "gate_bias", "down_bias"):
        grad = getattr(moe, name).grad
        assert grad is not None
        for e in range(4):  # 64 tokens x 2 choices: every expert receives tokens
            assert grad[e].abs().sum() > 0, f"{name}[{e}] got no gradient"

    moe.zero_grad()
    moe(x)
    moe.aux_loss.backward()
    assert moe.router.weight.grad.abs().sum() > 0  # the balancing loss trains the router too
    assert moe.up_weight.grad is None  # ... and nothing else


@pytest.mark.parametrize("renormalize", [True, False])
def test_top1_router_gradient_depends_on_renormalisation(renormalize: bool) -> None:
    # Renormalising a single weight makes it p / p = 1: the task loss cannot reach the router (up to rounding).
    torch.manual_seed(5)
    moe = MoEFeedForward(_cfg(top_k=1, renormalize_topk=renormalize))
    moe(torch.randn(16, 6)).sum().backward()
    largest = moe.router.weight.grad.abs().max().item()
    if renormalize:
        assert largest < 1e-6
    else:
        assert largest > 1e-3


def test_bfloat16_and_empty_input() -> None:
    torch.manual_seed(6)
    moe = MoEFeedForward(_cfg()).to(torch.bfloat16)
    out = moe(torch.randn(2, 3, 6, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 6)
    assert torch.isfinite(out).all()
    empty = moe(torch.randn(0, 6, dtype=torch.bfloat16))
    assert empty.shape == (0, 6) and moe.aux_loss.item() == 0.0


def test_load_expert_checks_kind() -> None:
    moe = MoEFeedForward(_cfg(gated=True))
    with pytest.raises(TypeError, match="GatedFFN"):
        moe.load_expert_(0, DenseFFN(FFNConfig(dim=6, hidden_dim=10, gated=False)))
    with pytest.raises(ValueError, match="num_experts=4"):
        moe.load_expert_(4, GatedFFN(FFNConfig(dim=6, hidden_dim=10)))


def test_collect_aux_loss_sums_layers_and_clear_resets() -> None:
    torch.manual_seed(7)
    model = nn.Sequential(MoEFeedForward(_cfg()), nn.ReLU(), MoEFeedForward(_cfg(balance_loss_weight=0.5)))
    assert collect_aux_loss(model).item() == 0.0  # nothing run yet
    model(torch.randn(10, 6))
    first, second = model[0].aux_loss, model[2].aux_loss
    assert first.item() > 0 and second.item() > 0
    total = collect_aux_loss(model)
    assert total.dim() == 0
    torch.testing.assert_close(total, first + second)

    clear_aux_loss(model)
    assert model[0].aux_loss is None and model[2].aux_loss is None
    zero = collect_aux_loss(model)
    assert zero.dim() == 0 and zero.item() == 0.0


def test_collect_aux_loss_rejects_non_scalar() -> None:
    layer = nn.Linear(2, 2)
    layer.aux_loss = torch.ones(3)
    with pytest.raises(ValueError, match="0-dim"):
        collect_aux_loss(layer)
