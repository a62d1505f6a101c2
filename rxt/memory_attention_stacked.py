"""The memory-attention layers run as one batched computation over the layer axis.

Every memory layer l has the same shapes (its STM slice (B, S, D), its encoded slice (B, T, D)) and its own
weights, so the L per-layer calls (norm, attention, gate: each a handful of small kernels) can be one call each
over (L, ...) tensors with the L layers' weights stacked: a projection ``F.linear(x_l, W_l)`` for every l is one
``torch.baddbmm`` over (L, B * S, D) x (L, D, D'), the attention one SDPA over L * B rows, the norms and gates
broadcast their (L, 1, 1, D) / (L, 1, S, 1) weights. Same maths as the layer loop (`MemoryAttentionNetwork.
layerwise_forward`), equal to it up to float rounding, with about L times fewer launches per memory update: what
the SMAT chain (one update per turn) and the MRL update (one per minibatch) are bound by at `nano` size.

The weights stay in the per-layer modules (checkpoints unchanged); they are stacked at each call (one
``torch.stack`` per weight kind, whose backward hands each layer its slice).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.gates import ResidualGate


def stackable(attentions: Sequence[Attention]) -> bool:
    """Whether the layers can run batched: the SDPA path (flash-attn takes its own route) for every layer."""
    return all(type(a) is Attention and a.cfg.backend == "sdpa" for a in attentions)


def _stack(modules: Sequence[nn.Module], name: str) -> torch.Tensor:
    return torch.stack([getattr(m, name) for m in modules])


def _project(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """(L, N, D_in) -> (L, N, D_out): ``linears[l](x[l])`` for every l, one batched matmul."""
    weight = _stack(linears, "weight").transpose(1, 2)  # (L, D_in, D_out)
    if linears[0].bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(_stack(linears, "bias").unsqueeze(1), x, weight)


def stacked_rms_norm(norms: Sequence[nn.RMSNorm], x: torch.Tensor) -> torch.Tensor:
    """``norms[l](x[l])`` for every l of ``x`` (L, ..., D); the same formula as `nn.RMSNorm` (weight after)."""
    weight = _stack(norms, "weight")
    shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[1],)
    return F.rms_norm(x, (x.shape[-1],), eps=norms[0].eps) * weight.view(shape)


def stacked_attention(attentions: Sequence[Attention], x: torch.Tensor, context: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """``attentions[l](x[l], context[l], mask=mask)`` for every l: x (L, B, S, D), context (L, B, T, D) (None:
    self-attention), mask (B, 1, 1, T) bool or None. Keys rotated as each module's RoPE mode says (positions 0..T-1,
    the modules' default); queries rotated likewise."""
    first = attentions[0]
    layers, batch, queries, _ = x.shape
    context = x if context is None else context
    keys = context.shape[2]
    heads_q, heads_kv, d = first.num_query_heads, first.num_kv_heads, first.head_dim

    def split(t: torch.Tensor, rows: int, heads: int) -> torch.Tensor:  # (L, B*rows, H*d) -> (L*B, H, rows, d)
        return t.view(layers * batch, rows, heads, d).transpose(1, 2)

    q = split(_project(x.flatten(1, 2), [a.q_proj for a in attentions]), queries, heads_q)
    flat = context.flatten(1, 2)
    k = split(_project(flat, [a.k_proj for a in attentions]), keys, heads_kv)
    v = split(_project(flat, [a.v_proj for a in attentions]), keys, heads_kv)
    if first.rope is not None:
        if first.rope_mode.rotates_queries:
            q = first.rope.rotate(q, torch.arange(queries, device=x.device))
        if first.rope_mode.rotates_keys:
            k = first.rope.rotate(k, torch.arange(keys, device=x.device))
    if mask is not None:  # (B, 1, 1, T) -> (L * B, 1, 1, T): layer-major, as the rows
        mask = mask.expand(layers, *mask.shape).flatten(0, 1)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=first.cfg.dropout if first.training else 0.0,
        enable_gqa=heads_q != heads_kv,
    )
    out = out.transpose(1, 2).reshape(layers, batch * queries, heads_q * d)
    return _project(out, [a.o_proj for a in attentions]).view(x.shape)


def stacked_gate(gates: Sequence[ResidualGate], stm: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``gates[l](stm[l], update[l])`` for every l of (L, B, S, D) tensors (see `rxt.gates` for the formulas)."""
    cfg = gates[0].cfg
    act = torch.sigmoid if cfg.activation == "sigmoid" else torch.tanh
    if cfg.kind == "static":
        g = act(_stack(gates, "weight")).to(stm.dtype).unsqueeze(1)  # (L, 1, S or 1, 1)
    elif cfg.kind == "elementwise":
        status = (stm + update).mean(dim=-1, keepdim=True)  # (L, B, S, 1)
        g = act(_stack(gates, "weight").unsqueeze(1) * status + _stack(gates, "bias").unsqueeze(1))
    else:
        g = act(_project((stm + update).flatten(1, 2), [gate.linear for gate in gates]).view(stm.shape))
    if cfg.activation == "sigmoid":
        return (1 - g) * stm + g * update
    return (1 - g) * stm + (1 + g) * update


__all__ = ["stackable", "stacked_attention", "stacked_gate", "stacked_rms_norm"]
