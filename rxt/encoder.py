"""Bidirectional encoder. Returns every layer's hidden states: in an RxT, layer l's output updates STM layer l."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rxt.config import TransformerConfig
from rxt.ffn import FFNConfig
from rxt.layers import EncoderLayer
from rxt.masks import key_padding_mask
from rxt.token_stack import TokenStack


@dataclass
class EncoderOutput:
    hidden_states: torch.Tensor  # (L, B, T, D): the residual stream after each layer
    last_hidden: torch.Tensor  # (B, T, D): final layer output after the final norm (for heads)


class Encoder(TokenStack):
    def __init__(
        self, cfg: TransformerConfig, embedding: nn.Embedding | None = None, ffn: FFNConfig | None = None
    ) -> None:
        super().__init__(cfg, embedding)
        attention = cfg.attention_config(cfg.self_attention)
        ffn = ffn or cfg.ffn_config()
        rope = self.positions.self_attention_rope
        self.layers = nn.ModuleList(EncoderLayer(attention, ffn, rope, cfg.norm_eps) for _ in range(cfg.num_layers))

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, validate: bool = True,
        positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
    ) -> EncoderOutput:
        """``validate=False`` skips the host-side id range check (training steps whose ids were checked when
        they were tokenised: the check reads values back from the device). ``positions`` (B, T) and ``mask``
        (B, 1, T, T) replace the default positions 0..T-1 and key-padding mask: packed rows, where several
        documents share a row and each restarts its positions and attends only to itself."""
        valid = self._check(input_ids, attention_mask) if validate else attention_mask
        if positions is None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if mask is None:
            mask = key_padding_mask(valid) if valid is not None else None
        rows = positions if positions.dim() == 2 else positions[None]
        bias = self.positions.bias(rows, rows)
        x = self.positions.embed(self.embedding(input_ids), positions)
        states = []
        for layer in self.layers:
            x = layer(x, positions=positions, mask=mask, bias=bias)
            states.append(x)
        return EncoderOutput(hidden_states=torch.stack(states), last_hidden=self.norm(x))
