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


_SHARED_WIDTHS = (
    "vocab_size", "dim", "num_heads", "self_attention", "ffn_hidden_dim", "ffn_activation", "ffn_gated",
    "num_experts", "top_k", "position_encoding", "rope_base", "dropout", "norm_eps", "tie_lm_head",
    "attention_backend",
)


def matched_decoder_config(
    rxt_config: TransformerConfig,
    max_seq_len: int,
    *,
    at_least: bool = False,
    max_layers_factor: int = 8,
    **overrides,
) -> tuple[TransformerConfig, int, int]:
    """The stateless baseline for an RxT: ``(config, baseline_params, rxt_params)``.

    A decoder-only config with the RxT's widths (``overrides`` replace some) and more layers, so that its
    parameter count matches the whole RxT's (encoder and memory attention included). The layer count grows from
    the RxT's up to ``max_layers_factor`` times it; it is the first that reaches the RxT's count when
    ``at_least``, else the closest. Counted on the meta device: nothing is allocated.
    """
    from rxt.model import RxT

    widths = {name: getattr(rxt_config, name) for name in _SHARED_WIDTHS} | overrides
    best: tuple[int, TransformerConfig, int] | None = None
    with torch.device("meta"):
        target = RxT(rxt_config).num_parameters()
        for layers in range(rxt_config.num_layers, max_layers_factor * rxt_config.num_layers + 1):
            cfg = TransformerConfig(**widths, num_layers=layers, max_seq_len=max_seq_len)
            params = DecoderLM(cfg).num_parameters()
            if at_least and params >= target:
                return cfg, params, target
            if best is None or abs(params - target) < best[0]:
                best = (abs(params - target), cfg, params)
            if params >= target:
                break
    assert best is not None
    return best[1], best[2], target
