"""The memory-attention layers run as one batched computation over the layer axis.

Every memory layer l has the same shapes (its STM slice (B, S, D), its encoded slice (B, T, D)) and its own
weights, so the L per-layer calls (norm, attention, gate: each a handful of small kernels) can be one call each
over (L, ...) tensors with the L layers' weights stacked: a projection ``F.linear(x_l, W_l)`` for every l is one
``torch.baddbmm`` over (L, B * S, D) x (L, D, D'), the attention one SDPA over L * B rows, the norms and gates
broadcast their (L, 1, 1, D) / (L, 1, S, 1) weights. Same maths as the layer loop (`MemoryAttentionNetwork.
layerwise_forward`), equal to it up to float rounding, with about L times fewer launches per memory update: what
the SMAT chain (one update per turn) and the MRL update (one per minibatch) are bound by at `nano` size.

The weights stay in the per-layer modules (checkpoints unchanged); `stacked_weights` stacks them (one
``torch.stack`` per weight kind, whose backward hands each layer its slice), once per call or once for a whole
chain of calls (the SMAT turns).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.gate_blend import ElementwiseGateBlend
from rxt.gates import GateConfig
from rxt.grouped_sdpa import grouped_sdpa


def stackable(attentions: Sequence[Attention]) -> bool:
    """Whether the layers can run batched: the SDPA path (flash-attn takes its own route) for every layer."""
    return all(type(a) is Attention and a.cfg.backend == "sdpa" for a in attentions)


#: stacked weights that only feed matmuls: cast once to the autocast dtype when stacked under autocast
_MATMUL_SUFFIXES = ("_proj.weight", "_proj.bias", "linear.weight", "linear.bias")


def stacked_weights(network: nn.Module, layers: int, folds: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Every per-layer parameter of ``network`` stacked over the layers: ``"attention.q_proj.weight"`` ->
    (L, D_out, D_in) from ``attention.<l>.q_proj.weight``; the key and value projections come concatenated as
    ``"attention.kv_proj.weight"`` (L, 2 * D_kv, D_in) (one matmul for both). Under autocast the matmul weights come cast to its
    dtype (as autocast would cast them at every use). Stack once and pass the dict to every call of a chain (the
    SMAT turns): the gradient then sums over the chain in the stacked tensor and is split to the L layers once.

    ``folds`` maps a projection (``"attention.q_proj"``) to the RMSNorm (``"query_norm"``) that normalises its
    input: the norm's weight is folded into the projection's (W_l * w_l, before any autocast cast) and left out of
    the dict, so the caller normalises without a weight (`stacked_rms_norm` with None). Same maths: RMSNorm then
    projection is x_hat (W diag(w))^T; the weighted (L, B, S, D) activation and its gradient are never written."""
    groups: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, param in network.named_parameters():
        parts = name.split(".")
        if len(parts) < 3 or not parts[1].isdigit():
            raise ValueError(f"stacked_weights: parameter {name!r} is not in a per-layer ModuleList")
        groups.setdefault(".".join([parts[0], *parts[2:]]), []).append((int(parts[1]), param))
    out = {}
    for key, items in groups.items():
        if sorted(i for i, _ in items) != list(range(layers)):
            raise ValueError(f"stacked_weights: {key!r} has layers {sorted(i for i, _ in items)}, expected 0..{layers - 1}")
        out[key] = torch.stack([p for _, p in sorted(items, key=lambda item: item[0])])
    for key in [k for k in out if k.endswith(".k_proj.weight")]:  # keys and values: one matmul, one gradient
        name = key[: -len(".k_proj.weight")]
        for part in ("weight", "bias"):
            if f"{name}.k_proj.{part}" in out:
                pair = (out.pop(f"{name}.k_proj.{part}"), out.pop(f"{name}.v_proj.{part}"))
                out[f"{name}.kv_proj.{part}"] = torch.cat(pair, dim=1)
    folded = set()
    for projection, norm in (folds or {}).items():
        out[f"{projection}.weight"] = out[f"{projection}.weight"] * out[f"{norm}.weight"].unsqueeze(1)
        folded.add(f"{norm}.weight")
    for key in folded:
        del out[key]
    device = next(iter(out.values())).device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        out = {k: w.to(dtype) if k.endswith(_MATMUL_SUFFIXES) else w for k, w in out.items()}
    return out


def _project(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """(L, N, D_in) -> (L, N, D_out): the layers' linear ``name`` applied to x[l] for every l, one batched matmul."""
    weight = weights[f"{name}.weight"].transpose(1, 2)  # (L, D_in, D_out)
    bias = weights.get(f"{name}.bias")
    x = _as_weighted(x, weight)
    return torch.bmm(x, weight) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, weight)


def _as_weighted(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` in the dtype ``x * weight`` would have: a normalised input whose RMSNorm weight was folded into
    ``weight`` gets the dtype the weighted norm gave it (a float32 STM into a float64 model: float64). Under
    autocast the stacked weights are already in its dtype and ``x`` is left as it is (the matmul casts it)."""
    return x if x.dtype == weight.dtype else x.to(torch.promote_types(x.dtype, weight.dtype))


def stacked_rms_norm(weight: torch.Tensor | None, eps: float | None, x: torch.Tensor) -> torch.Tensor:
    """The layers' RMSNorms (stacked ``weight`` (L, D)) over ``x`` (L, ..., D); `nn.RMSNorm`'s formula. ``weight``
    None: the normalisation alone (the weight folded into the next projection: `stacked_weights`' ``folds``)."""
    if weight is None:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[1],)
    return F.rms_norm(x, (x.shape[-1],), eps=eps) * weight.view(shape)


def stacked_key_value(module: Attention, weights: dict[str, torch.Tensor], name: str, context: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys and values of the layers' attention ``name`` over ``context`` (L, M, B, T, D): M batches (the
    turns of a chain) at once -> (M, L * B, H_kv, T, d) each, layer-major rows, keys rotated as the module's RoPE
    mode says (positions 0..T-1). They read only the context, so a chain computes every turn's in one call."""
    layers, turns, batch, keys, _ = context.shape
    heads, d = module.num_kv_heads, module.head_dim
    kv = _project(context.reshape(layers, turns * batch * keys, -1), weights, f"{name}.kv_proj")
    kv = kv.view(layers, turns, batch, keys, 2, heads, d).permute(4, 1, 0, 2, 5, 3, 6)  # (2, M, L, B, H, T, d)
    k, v = kv.reshape(2, turns, layers * batch, heads, keys, d).unbind(0)  # a view when M = 1
    if module.rope is not None and module.rope_mode.rotates_keys:
        k = module.rope.rotate(k, torch.arange(keys, device=context.device))
    return k, v


def shared_key_value(module: Attention, weights: dict[str, torch.Tensor], name: str, context: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """`stacked_key_value` of one turn for a ``context`` (B, T, D) that every layer reads (the interlayer variant's
    layer mean): one matmul of it with the L layers' key/value weights side by side, (B * T, D) x (D, L * 2 * D_kv),
    instead of L copies of it -> (L * B, H_kv, T, d) each, layer-major rows as `stacked_key_value`'s."""
    weight = weights[f"{name}.kv_proj.weight"]  # (L, 2 * D_kv, D)
    bias = weights.get(f"{name}.kv_proj.bias")
    layers, (batch, keys, _) = weight.shape[0], context.shape
    heads, d = module.num_kv_heads, module.head_dim
    kv = F.linear(_as_weighted(context, weight), weight.flatten(0, 1),  # (B, T, L * 2 * D_kv)
                  None if bias is None else bias.flatten())
    kv = kv.view(batch, keys, layers, 2, heads, d).permute(3, 2, 0, 4, 1, 5)  # (2, L, B, H, T, d)
    k, v = kv.reshape(2, layers * batch, heads, keys, d).unbind(0)
    if module.rope is not None and module.rope_mode.rotates_keys:
        k = module.rope.rotate(k, torch.arange(keys, device=context.device))
    return k, v


def stacked_attention(module: Attention, weights: dict[str, torch.Tensor], name: str, x: torch.Tensor,
                      context: torch.Tensor | None = None, mask: torch.Tensor | None = None, *,
                      key_value: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The layers' attention ``name`` (``module``: one of them, for its heads, RoPE and dropout) from x[l] to
    context[l] for every l: x (L, B, S, D), context (L, B, T, D) (None: self-attention) or its ``key_value``
    (`stacked_key_value`, one turn's: (L * B, H_kv, T, d) each), mask (B, 1, 1, T) bool, or already per stacked
    row (L * B, 1, 1, T) (`stacked_key_bias`), or None. RoPE as the module's mode says (positions 0..n-1, the
    module's default)."""
    layers, batch, queries, _ = x.shape
    heads_q, d = module.num_query_heads, module.head_dim
    if key_value is None:
        key_value = tuple(t[0] for t in stacked_key_value(module, weights, name, (x if context is None else context
                                                                                   ).unsqueeze(1)))
    k, v = key_value
    q = _project(x.flatten(1, 2), weights, f"{name}.q_proj").view(layers * batch, queries, heads_q, d).transpose(1, 2)
    if module.rope is not None and module.rope_mode.rotates_queries:
        q = module.rope.rotate(q, torch.arange(queries, device=x.device))
    if mask is not None and mask.shape[0] != layers * batch:  # (B, 1, 1, T) -> (L * B, 1, 1, T): layer-major
        mask = mask.expand(layers, *mask.shape).flatten(0, 1)
    out = grouped_sdpa(q, k, v, attn_mask=mask, dropout_p=module.cfg.dropout if module.training else 0.0)
    out = out.transpose(1, 2).reshape(layers, batch * queries, heads_q * d)
    return _project(out, weights, f"{name}.o_proj").view(x.shape)


def stacked_key_bias(key_valid: torch.Tensor, layers: int, dtype: torch.dtype) -> torch.Tensor:
    """(..., B, T) bool -> (..., L * B, 1, 1, T) additive attention bias of the stacked rows (layer-major): 0 for
    a valid key, -inf for padding, all 0 for a row with no valid key (`rxt.masks.key_padding_mask`'s rule; SDPA
    turns a bool mask into exactly this bias itself, at every call)."""
    valid = key_valid.bool()
    valid = valid | ~valid.any(dim=-1, keepdim=True)
    bias = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, float("-inf"))
    lead, (batch, keys) = bias.shape[:-2], bias.shape[-2:]
    bias = bias.unsqueeze(-3).expand(*lead, layers, batch, keys)
    return bias.reshape(*lead, layers * batch, 1, 1, keys)


def _promoted(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype arithmetic on ``tensors`` would produce (no dispatch when they share one, the usual case)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = dtype if t.dtype == dtype else torch.promote_types(dtype, t.dtype)
    return dtype


def stacked_gate(cfg: GateConfig, weights: dict[str, torch.Tensor], name: str, stm: torch.Tensor,
                 update: torch.Tensor) -> torch.Tensor:
    """The layers' residual gates ``name`` (all of config ``cfg``) blending update[l] into stm[l] for every l of
    (L, B, S, D) tensors (see `rxt.gates` for the formulas)."""
    act = torch.sigmoid if cfg.activation == "sigmoid" else torch.tanh
    if cfg.kind == "static":
        g = act(weights[f"{name}.weight"]).to(stm.dtype).unsqueeze(1)  # (L, 1, S or 1, 1)
    elif cfg.kind == "elementwise":  # the whole gate in one function with a lean backward (`rxt.gate_blend`)
        return ElementwiseGateBlend.apply(stm, update, weights[f"{name}.weight"].unsqueeze(1),
                                          weights[f"{name}.bias"].unsqueeze(1), cfg.activation == "sigmoid")
    else:
        g = act(_project((stm + update).flatten(1, 2), weights, f"{name}.linear").view(stm.shape))
    if cfg.activation == "sigmoid":  # (1 - g) * stm + g * update, one op (dtypes promoted as that expression)
        dtype = _promoted(stm, update, g)
        return torch.lerp(stm.to(dtype), update.to(dtype), g.to(dtype))
    return (1 - g) * stm + (1 + g) * update


__all__ = ["shared_key_value", "stackable", "stacked_attention", "stacked_gate", "stacked_key_bias", "stacked_key_value", "stacked_rms_norm",
           "stacked_weights"]
