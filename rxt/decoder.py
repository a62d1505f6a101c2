"""Causal decoder with optional memory cross-attention and an LM head.

Full forward (training, teacher forcing): ``decoder(ids, attention_mask=..., memory=...)``.
Incremental decoding: pass a `KVCache`; the call writes the new tokens' keys at each row's next positions and
advances the cache. Memory K/V come from `project_memory(stm)`, computed once per turn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rxt.config import RxTConfig, TransformerConfig
from rxt.kv_cache import KVCache
from rxt.layers import DecoderLayer, MemoryKV
from rxt.masks import cached_causal_mask, causal_mask
from rxt.memory_read_stacked import memory_reads_stackable, stacked_memory_key_value
from rxt.token_stack import TokenStack


@dataclass
class DecoderOutput:
    logits: torch.Tensor | None  # (B, T, V), None when compute_logits=False
    hidden: torch.Tensor  # (B, T, D) after the final norm


class Decoder(TokenStack):
    def __init__(self, cfg: TransformerConfig, embedding: nn.Embedding | None = None, *, with_memory: bool = True):
        super().__init__(cfg, embedding)
        attention = cfg.attention_config(cfg.self_attention)
        ffn = cfg.ffn_config()
        rope = self.positions.self_attention_rope
        memory_layers: set[int] = set()
        cross = None
        if with_memory:
            if not isinstance(cfg, RxTConfig):
                raise TypeError("Decoder(with_memory=True) needs an RxTConfig")
            cross = cfg.attention_config(cfg.cross_attention)
            memory_layers = set(range(cfg.num_layers)) - set(cfg.memory_free_layers)
        self.layers = nn.ModuleList(
            DecoderLayer(
                attention,
                ffn,
                rope,
                cfg.norm_eps,
                cross_attention=cross if i in memory_layers else None,
                memory_rope=self.positions.rope,
            )
            for i in range(cfg.num_layers)
        )
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_lm_head:
            self.lm_head.weight = self.embedding.weight

    @property
    def num_kv_heads(self) -> int:
        return self.cfg.attention_config(self.cfg.self_attention).num_kv_heads

    def new_cache(
        self, batch_size: int, capacity: int | None = None, *, dtype=None, device=None, static: bool = False
    ) -> KVCache:
        """A preallocated KV cache for ``batch_size`` rows of up to ``capacity`` tokens (default max_seq_len)."""
        capacity = capacity or self.cfg.max_seq_len
        if capacity > self.cfg.max_seq_len:
            raise ValueError(f"KV cache capacity={capacity} exceeds max_seq_len={self.cfg.max_seq_len}")
        weight = self.embedding.weight
        return KVCache(
            self.cfg.num_layers,
            batch_size,
            self.num_kv_heads,
            self.cfg.head_dim,
            capacity,
            dtype=dtype or weight.dtype,
            device=device or weight.device,
            static=static,
        )

    def project_memory(self, memory: torch.Tensor) -> list[MemoryKV | None]:
        """Project STM (L, B, S, D) (or any per-layer memory) to per-layer cross-attention keys/values."""
        if memory.shape[0] != len(self.layers):
            raise ValueError(f"memory has {memory.shape[0]} layers; the decoder has {len(self.layers)}")
        if memory_reads_stackable(self.layers):  # every layer reads the memory: one stacked projection
            return stacked_memory_key_value(self.layers, memory)
        # unbind, not memory[i]: the backward of L selects writes L zero-filled copies of the whole memory and adds
        # them up (an (L, N*B, S, D) stack of SMAT turns is GBs); unbind's is one stack of the L gradients
        return [layer.project_memory(m) for m, layer in zip(memory.unbind(0), self.layers, strict=True)]

    def forward(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        memory: list[MemoryKV | None] | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        compute_logits: bool = True,
        validate: bool = True,
        positions: torch.Tensor | None = None,
        self_mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Run the decoder over ``input_ids`` (B, T).

        ``attention_mask`` (B, T) marks real tokens (right padding). ``memory`` is `project_memory`'s output;
        ``memory_mask`` (B, 1, 1, S) masks memory keys (only needed when the memory has padding, e.g. encoder
        states in joint pre-training). ``validate=False`` skips the host-side id checks in decode steps.
        ``positions`` (B, T) and ``self_mask`` (B, 1, T, T) (full forward only) replace positions 0..T-1 and the
        causal mask: packed rows, where each document restarts its positions and sees only its own past.
        """
        valid = self._check(input_ids, attention_mask) if validate else attention_mask
        t = input_ids.shape[1]
        if cache is not None:
            positions = cache.positions_for(t)
            key_count = cache.key_count(t)
            mask = cached_causal_mask(positions, key_count)
            bias = self.positions.bias(positions, torch.arange(key_count, device=input_ids.device)[None])
            causal = False
        elif self_mask is not None:
            if positions is None:
                raise ValueError("Decoder: a self_mask (packed rows) needs the per-token positions")
            bias = self.positions.bias(positions, positions)
            mask, causal = self_mask, False
        else:
            positions = torch.arange(t, device=input_ids.device)
            bias = self.positions.bias(positions[None], positions[None])
            needs_mask = valid is not None or bias is not None
            mask = causal_mask(valid, t, input_ids.device) if needs_mask else None
            causal = not needs_mask  # lets SDPA take its fused causal kernels
        x = self.positions.embed(self.embedding(input_ids), positions)
        for i, layer in enumerate(self.layers):
            x = layer(
                x,
                positions=positions,
                mask=mask,
                causal=causal,
                memory=memory[i] if memory is not None else None,
                memory_mask=memory_mask,
                cache=cache,
                layer_index=i,
                bias=bias,
            )
        if cache is not None:
            cache.advance(t, valid.sum(dim=1) if valid is not None else None)
        hidden = self.norm(x)
        return DecoderOutput(logits=self.lm_head(hidden) if compute_logits else None, hidden=hidden)
