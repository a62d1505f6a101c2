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
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, validate: bool = True
    ) -> EncoderOutput:
        """``validate=False`` skips the host-side id checks (a caller that built the ids, or a CUDA graph)."""
        valid = self._check(input_ids, attention_mask) if validate else attention_mask
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        mask = key_padding_mask(valid) if valid is not None else None
        bias = self.positions.bias(positions[None], positions[None])
        x = self.positions.embed(self.embedding(input_ids), positions)
        states = []
        for layer in self.layers:
            x = layer(x, positions=positions, mask=mask, bias=bias)
            states.append(x)
        return EncoderOutput(hidden_states=torch.stack(states), last_hidden=self.norm(x))
