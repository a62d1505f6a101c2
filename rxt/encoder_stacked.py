"""Several encoders of one configuration run as one batched pass (the MRL policy's encoder and its critic's copy).

`rxt.memory_attention_stacked` batches the L memory-attention layers over a layer axis; the same functions batch
M encoders of identical shapes over a model axis: for each depth l, the M encoders' layer-l weights are stacked
(`stacked_weights`, one ``torch.stack`` per weight kind, whose backward hands each encoder its slice) and every
projection of the M encoders is one ``torch.baddbmm``, the attention one SDPA over M * B rows, the norms one
broadcast. An IMPO step encodes the saved interaction for the policy's memory write and (saved interaction + next
query) for the critic: two six-layer encoders, forward and backward, each a few hundred launches, now one.

Same maths as the M `Encoder.forward` calls (their inputs right-padded to one width: padding keys are masked, so
the real tokens' states equal the separate passes' up to float rounding; tests/rxt/test_encoder_stacked.py).
Only plain stacks stack (`encoders_stackable`): SDPA attention, dense or gated FFN, no relative-position bias,
no dropout in training mode; anything else runs the encoders one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rxt.encoder import Encoder
from rxt.ffn import DenseFFN, GatedFFN
from rxt.layers import EncoderLayer
from rxt.masks import key_padding_mask
from rxt.memory_attention_stacked import (
    _project,
    stackable,
    stacked_attention,
    stacked_rms_norm,
    stacked_weights,
)


def encoders_stackable(encoders: Sequence[Encoder]) -> bool:
    """Whether ``encoders`` can run as one stacked pass: the same configuration, SDPA attention, dense or gated
    FFNs (no MoE), no relative-position bias (absolute positions and RoPE are fine), and no dropout that would
    fire (training mode with a non-zero rate)."""
    first = encoders[0]
    if len(encoders) < 2 or any(type(e) is not Encoder or e.cfg != first.cfg for e in encoders):
        return False
    if first.positions.relative is not None:
        return False
    for encoder in encoders:
        for layer in encoder.layers:
            if type(layer) is not EncoderLayer or type(layer.ffn) not in (GatedFFN, DenseFFN):
                return False
            if not stackable([layer.self_attn]):
                return False
            if layer.training and (layer.self_attn.cfg.dropout > 0 or layer.ffn.cfg.dropout > 0):
                return False
    return True


class _Depth(nn.Module):
    """The M encoders' layers of one depth as one per-layer ModuleList (the layout `stacked_weights` reads)."""

    def __init__(self, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.m = nn.ModuleList(layers)


def _stacked_ffn(ffn: nn.Module, weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The M encoders' FFNs (``ffn``: one of them, for its kind and activation) over x (M, B, T, D)."""
    flat = x.flatten(1, 2)
    if type(ffn) is GatedFFN:
        hidden = ffn.act(_project(flat, weights, "m.ffn.gate")) * _project(flat, weights, "m.ffn.up")
    else:
        hidden = ffn.act(_project(flat, weights, "m.ffn.up"))
    return _project(hidden, weights, "m.ffn.down").view(x.shape)


def stacked_encode(encoders: Sequence[Encoder], input_ids: torch.Tensor, attention_mask: torch.Tensor
                   ) -> torch.Tensor:
    """``input_ids`` / ``attention_mask`` (M, B, T) (encoder m reads row block m; right padding) -> hidden states
    (L, M, B, T, D): what ``encoders[m](input_ids[m], attention_mask[m]).hidden_states`` returns, for every m (no
    id checks: the caller checks the ids). An encoder's ``last_hidden`` is its own final norm of the last layer's
    states, ``encoders[m].norm(states[-1, m])``, left to the caller (a norm no output reads would otherwise get a
    zero gradient instead of none, and AdamW moves a parameter with a zero gradient). Needs `encoders_stackable`."""
    models, batch, width = input_ids.shape
    first = encoders[0]
    positions = torch.arange(width, device=input_ids.device)
    x = torch.stack([e.positions.embed(e.embedding(ids), positions) for e, ids in zip(encoders, input_ids,
                                                                                       strict=True)])
    mask = key_padding_mask(attention_mask.reshape(models * batch, width))  # (M * B, 1, 1, T): model-major rows
    states = []
    for depth in range(len(first.layers)):
        layers = [e.layers[depth] for e in encoders]
        weights = stacked_weights(_Depth(layers), models)
        layer = layers[0]
        h = stacked_rms_norm(weights["m.attn_norm.weight"], layer.attn_norm.eps, x)
        x = x + stacked_attention(layer.self_attn, weights, "m.self_attn", h, mask=mask)
        x = x + _stacked_ffn(layer.ffn, weights, stacked_rms_norm(weights["m.ffn_norm.weight"], layer.ffn_norm.eps, x))
        states.append(x)
    return torch.stack(states)


def right_pad_stack(rows: Sequence[tuple[torch.Tensor, torch.Tensor]], pad_id: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(ids (B, T_m), mask (B, T_m)), ...]`` -> ids and masks (M, B, max T_m), right-padded with ``pad_id`` /
    False: the inputs of `stacked_encode`."""
    width = max(ids.shape[1] for ids, _ in rows)
    ids = torch.stack([F.pad(i, (0, width - i.shape[1]), value=pad_id) for i, _ in rows])
    mask = torch.stack([F.pad(m.bool(), (0, width - m.shape[1]), value=False) for _, m in rows])
    return ids, mask


__all__ = ["encoders_stackable", "right_pad_stack", "stacked_encode"]
