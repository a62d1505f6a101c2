"""What the encoder, the decoder and the classic LMs share: token embedding, position scheme, layers, final
norm. Subclasses decide the layer type and the attention pattern."""

from __future__ import annotations

import torch
from torch import nn

from rxt.config import TransformerConfig
from rxt.position_encoding import PositionEncoding
from rxt.validation import check_attention_mask, check_token_ids


class TokenStack(nn.Module):
    def __init__(self, cfg: TransformerConfig, embedding: nn.Embedding | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        # An RxT passes one embedding to both its encoder and decoder (they share the token space).
        self.embedding = embedding if embedding is not None else nn.Embedding(cfg.vocab_size, cfg.dim)
        self.positions = PositionEncoding(
            cfg.position_encoding,
            head_dim=cfg.head_dim,
            num_heads=cfg.attention_config(cfg.self_attention).num_query_heads,
            max_seq_len=cfg.max_seq_len,
            dim=cfg.dim,
            rope_base=cfg.rope_base,
        )
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps)

    def _check(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        check_token_ids(input_ids, self.cfg.vocab_size, self.cfg.max_seq_len)
        return check_attention_mask(attention_mask, input_ids)
