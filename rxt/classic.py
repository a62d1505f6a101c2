"""Classic (memory-free) transformers from the same blocks: a decoder-only LM and an MLM encoder.

For users who train ordinary transformers, and as the stateless baseline that re-reads the whole history
``[Q]q1[A]a1 ... [Q]qN[A]`` every turn.
"""

from __future__ import annotations

import torch
from torch import nn

from rxt.config import TransformerConfig
from rxt.decoder import Decoder, DecoderOutput
from rxt.encoder import Encoder
from rxt.hub import HubMixin
from rxt.kv_cache import KVCache


class DecoderLM(nn.Module, HubMixin):
    """Causal LM: embedding, causal self-attention layers (dense or MoE FFN), LM head."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = Decoder(config, with_memory=False)
        nn.init.normal_(self.decoder.embedding.weight, std=0.02)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> DecoderOutput:
        return self.decoder(input_ids, attention_mask=attention_mask, cache=cache)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class EncoderLM(nn.Module, HubMixin):
    """Bidirectional encoder with a masked-LM head (tied to the embedding when ``tie_lm_head``)."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        nn.init.normal_(self.encoder.embedding.weight, std=0.02)
        self.mlm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_lm_head:
            self.mlm_head.weight = self.encoder.embedding.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """MLM logits (B, T, V)."""
        return self.mlm_head(self.encoder(input_ids, attention_mask).last_hidden)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
