"""`rxt.gate_blend.ElementwiseGateBlend` (the layer-batched elementwise gate with its hand-written backward) equals
autograd over `rxt.gates.ResidualGate`'s formula, float64, values and every gradient."""

import pytest
import torch

from rxt.gate_blend import ElementwiseGateBlend

L, B, S, D = 3, 2, 5, 8


def _reference(stm, update, weight, bias, sigmoid):
    """`ResidualGate.forward` for the elementwise kind, written out."""
    status = (stm + update).mean(dim=-1, keepdim=True)
    z = weight * status + bias
    g = torch.sigmoid(z) if sigmoid else torch.tanh(z)
    return (1 - g) * stm + g * update if sigmoid else (1 - g) * stm + (1 + g) * update


def _inputs(rows: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    stm = torch.randn(L, B, S, D, generator=g, dtype=dtype)
    update = torch.randn(L, B, S, D, generator=g, dtype=dtype)
    weight = 0.7 * torch.randn(L, 1, rows, 1, generator=g, dtype=dtype)
    bias = torch.randn(L, 1, rows, 1, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (stm, update, weight, bias)]


@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid", "tanh"])
@pytest.mark.parametrize("rows", [S, 1], ids=["per-slot", "per-layer"])
def test_equals_autograd_over_the_formula(sigmoid: bool, rows: int) -> None:
    inputs = _inputs(rows)
    probe = torch.linspace(-1, 1, L * B * S * D, dtype=torch.float64).view(L, B, S, D)
    results = []
    for fn in (lambda *a: ElementwiseGateBlend.apply(*a, sigmoid), lambda *a: _reference(*a, sigmoid)):
        out = fn(*inputs)
        grads = torch.autograd.grad((out * probe).sum(), inputs)
        results.append((out.detach(), grads))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for name, got, want in zip(("stm", "update", "weight", "bias"), grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-11, msg=name)


@pytest.mark.parametrize("sigmoid", [True, False], ids=["sigmoid", "tanh"])
def test_gradcheck(sigmoid: bool) -> None:
    g = torch.Generator().manual_seed(1)
    shapes = [(2, 1, 3, 4), (2, 1, 3, 4), (2, 1, 3, 1), (2, 1, 3, 1)]
    inputs = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    assert torch.autograd.gradcheck(lambda *a: ElementwiseGateBlend.apply(*a, sigmoid), inputs)


def test_lower_precision_update_and_inputs_without_grad() -> None:
    """A bf16 update (the memory attention's output under autocast) is promoted as ``stm + update`` would be; its
    gradient comes back in bf16; inputs that need no gradient get none."""
    stm, update, weight, bias = (t.detach().float() for t in _inputs(S))
    update = update.bfloat16().requires_grad_()
    weight.requires_grad_()
    out = ElementwiseGateBlend.apply(stm, update, weight, bias, True)
    ref = _reference(stm, update.detach().float(), weight.detach(), bias, True)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    grad_update, grad_weight = torch.autograd.grad(out.sum(), [update, weight])
    assert grad_update.dtype == torch.bfloat16 and grad_weight.shape == weight.shape


def test_a_lower_precision_update_gets_its_gradient_rounded_once() -> None:
    """A bfloat16 update (autocast's attention output) beside a float32 STM: its gradient is the float32 formula's,
    rounded once to bfloat16 (bit-equal to rounding the float32 gradient); the STM's stays float32."""
    stm, update, weight, bias = (t.detach() for t in _inputs(S, torch.float32))
    update = update.to(torch.bfloat16)
    probe = torch.linspace(-1, 1, L * B * S * D).view(L, B, S, D)
    leaves = [t.requires_grad_() for t in (stm, update, weight, bias)]
    out = ElementwiseGateBlend.apply(*leaves, True)
    grads = torch.autograd.grad((out * probe).sum(), leaves)
    wide = [t.detach().float().requires_grad_() for t in leaves]
    ref = torch.autograd.grad((ElementwiseGateBlend.apply(*wide, True) * probe).sum(), wide)
    assert grads[0].dtype == torch.float32 and grads[1].dtype == torch.bfloat16
    assert torch.equal(grads[1], ref[1].to(torch.bfloat16))
    torch.testing.assert_close(grads[0], ref[0], rtol=0, atol=1e-6)
