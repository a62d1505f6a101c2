"""The decoder's memory keys and values for all its layers in one batched computation.

Decoder layer l reads STM layer l through its memory cross-attention, whose keys and values
``k_l, v_l = Attention_l.project_key_value(RMSNorm_l(STM_l))`` read only the memory: so the L layers' projections
are one stacked norm and one ``torch.baddbmm`` over (L, B * S, D) x (L, D, 2 * D_kv) (`rxt.memory_attention_stacked`'s
functions over the layer axis) instead of L norms and 2 L matmuls. Same maths as the layer loop
(`DecoderLayer.project_memory`), equal to it up to float rounding (tests/rxt/test_memory_read_stacked.py). Every
training step that decodes from a memory (joint, SMAT, the MRL update) and every prefill projects it once.
The weights are stacked from the parameters at each call (no modules built: torch.compile traces it as is).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rxt.memory_attention_stacked import stackable, stacked_key_value, stacked_rms_norm


def memory_reads_stackable(layers: Sequence[nn.Module]) -> bool:
    """Whether the layers' memory projections can run stacked: more than one layer, every layer reads the memory,
    through SDPA attentions of one shape, with norms of one epsilon."""
    if len(layers) < 2 or not all(getattr(layer, "has_memory", False) for layer in layers):
        return False
    attentions = [layer.memory_cross_attn for layer in layers]
    first = attentions[0]
    return (stackable(attentions) and all(a.cfg == first.cfg for a in attentions)
            and len({layer.memory_norm.eps for layer in layers}) == 1)


def stacked_memory_key_value(layers: Sequence[nn.Module], memory: torch.Tensor
                             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``memory`` (L, B, S, D) -> per layer l the keys and values (B, H_kv, S, d) that
    ``layers[l].project_memory(memory[l])`` returns (views of two stacked tensors). Needs `memory_reads_stackable`."""
    attentions = [layer.memory_cross_attn for layer in layers]
    norms = torch.stack([layer.memory_norm.weight for layer in layers])  # (L, D)
    weights = {}
    for part in ("weight", "bias"):
        if getattr(attentions[0].k_proj, part) is None:
            continue
        k = torch.stack([getattr(a.k_proj, part) for a in attentions])
        v = torch.stack([getattr(a.v_proj, part) for a in attentions])
        kv = torch.cat((k, v), dim=1)  # (L, 2 * D_kv, D) / (L, 2 * D_kv): one matmul for keys and values
        if part == "weight":
            # the norm's weight folded into the projection (as `DecoderLayer.project_memory` does): the weighted
            # (L, B, S, D) memory, an SMAT step's largest activation, and its gradient are never written
            kv = kv * norms.unsqueeze(1)
        if torch.is_autocast_enabled(kv.device.type):  # as autocast casts a weight at every use
            kv = kv.to(torch.get_autocast_dtype(kv.device.type))
        weights[f"m.kv_proj.{part}"] = kv
    h = stacked_rms_norm(None, layers[0].memory_norm.eps, memory)
    if h.dtype != norms.dtype:  # the dtype the weighted norm gave it (`DecoderLayer.project_memory`)
        h = h.to(torch.promote_types(h.dtype, norms.dtype))
    keys, values = stacked_key_value(attentions[0], weights, "m", h.unsqueeze(1))  # (1, L * B, H_kv, S, d) each
    count, batch = memory.shape[:2]
    return list(zip(keys[0].unflatten(0, (count, batch)).unbind(0), values[0].unflatten(0, (count, batch)).unbind(0),
                    strict=True))


__all__ = ["memory_reads_stackable", "stacked_memory_key_value"]
