"""The elementwise residual gate of the layer-batched memory attention, with a hand-written backward.

    status = mean_D(STM + U)   G = act(w * status + b)   (per slot or per layer: (L, 1, S or 1, 1) weights)
    sigmoid: STM' = (1 - G) * STM + G * U          tanh: STM' = (1 - G) * STM + (1 + G) * U

Autograd over these ops writes, per memory update, five or six tensors of the STM's full size (L, B, S, D) in the
backward alone (the blend's two products, U - STM, its product with the gradient, the mean's broadcast gradient and
the sums that add it to the others), and the forward writes STM + U only to average it. In a SMAT step the STM chain
runs these over every turn at fp32 and they were the largest memory traffic of the step. Here the forward averages
STM and U separately (never writing their sum) and the backward writes, besides U - STM and its product with the
gradient, only the two input gradients, each one fused multiply-add of the gradient with the gate and the status
term (`torch.addcmul`); the gate's own small graph (status, w, b -> G) is differentiated by hand. Same maths as
`rxt.gates.ResidualGate` (tests/rxt/test_gate_blend.py, float64).
"""

from __future__ import annotations

import torch


class ElementwiseGateBlend(torch.autograd.Function):
    """``apply(stm, update, weight, bias, sigmoid)``: the gated blend above. ``stm``, ``update`` (..., S, D) (the
    update may be of a lower precision: it is promoted as ``stm + update`` would be), ``weight`` and ``bias``
    broadcastable to (..., S, 1); ``sigmoid`` False: the tanh form."""

    @staticmethod
    def _gate(status: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, sigmoid: bool) -> torch.Tensor:
        z = weight * status + bias
        return torch.sigmoid(z) if sigmoid else torch.tanh(z)

    @staticmethod
    def forward(ctx, stm, update, weight, bias, sigmoid: bool):
        dtype = stm.dtype
        for t in (update, weight, bias):  # as `stm + update` and the gate's arithmetic would promote
            dtype = dtype if t.dtype == dtype else torch.promote_types(dtype, t.dtype)
        s, u = stm.to(dtype), update.to(dtype)
        status = s.mean(dim=-1, keepdim=True) + u.mean(dim=-1, keepdim=True)  # = mean_D(STM + U), no sum written
        g = ElementwiseGateBlend._gate(status, weight, bias, sigmoid)
        out = torch.lerp(s, u, g) if sigmoid else torch.addcmul(s + u, g, u - s)
        ctx.save_for_backward(stm, update, status, weight, g)
        ctx.sigmoid, ctx.bias_shape = sigmoid, bias.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        stm, update, status, weight, g = ctx.saved_tensors
        grad_g = (grad * (update - stm)).sum(dim=-1, keepdim=True)  # dOut/dG = U - STM, both forms
        # the small (..., S, 1) graph z = w * status + b, G = act(z), by hand (traceable by torch.compile)
        d_z = grad_g * (g * (1 - g) if ctx.sigmoid else 1 - g * g)
        d_weight = (d_z * status).sum_to_size(weight.shape) if ctx.needs_input_grad[2] else None
        d_bias = d_z.sum_to_size(ctx.bias_shape) if ctx.needs_input_grad[3] else None
        d_status = d_z * weight / stm.shape[-1]  # d status / d STM = d status / d U = 1 / D
        grad_stm = grad_update = None
        if ctx.needs_input_grad[0]:
            grad_stm = torch.addcmul(d_status, grad, 1 - g).to(stm.dtype)
        if ctx.needs_input_grad[1]:
            factor = g if ctx.sigmoid else 1 + g
            if update.dtype != grad.dtype and update.shape == grad.shape:
                # a lower-precision update (bf16 under autocast) gets its gradient written in its dtype at once (one
                # rounding, as .to() after the float32 result), not a float32 copy of the STM's size first
                grad_update = torch.addcmul(d_status, grad, factor, out=torch.empty_like(update))
            else:
                grad_update = torch.addcmul(d_status, grad, factor).to(update.dtype)
        return grad_stm, grad_update, d_weight, d_bias, None


__all__ = ["ElementwiseGateBlend"]
