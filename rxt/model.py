"""The Reactive Transformer composite: one shared embedding, encoder, decoder, memory attention and STM.

A turn, for a batch of sessions with memory ``stm`` (L, B, S, D):

1. answer:  ``memory = model.project_memory(stm)`` once, then the decoder generates on the query with it;
2. update:  ``stm = model.update_memory(stm, interaction_ids)``: ED = Encoder([BOS][Q] q [A] a [EOS]),
            STM' = MemAttn(STM, ED). This runs after the answer is delivered (the runtime schedules it).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from rxt.config import RxTConfig
from rxt.decoder import Decoder, DecoderOutput
from rxt.encoder import Encoder
from rxt.hub import HubMixin
from rxt.layers import MemoryKV
from rxt.memory_attention import MemoryAttentionConfig, build_memory_attention
from rxt.stm import ShortTermMemory, STMConfig


class RxT(nn.Module, HubMixin):
    config_class = RxTConfig

    def __init__(self, config: RxTConfig) -> None:
        super().__init__()
        if not isinstance(config, RxTConfig):
            raise TypeError(f"RxT needs an RxTConfig, got {type(config).__name__}")
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embedding.weight, std=0.02)
        # The encoder's FFN is dense: MoE (num_experts) applies to the decoder, as in RxT-Alpha.
        encoder_ffn = config.ffn_config(num_experts=0, hidden_dim=config.encoder_ffn_hidden_dim)
        self.encoder = Encoder(config, self.embedding, ffn=encoder_ffn)
        self.decoder = Decoder(config, self.embedding, with_memory=True)
        self.memory_attention = build_memory_attention(
            MemoryAttentionConfig(
                num_layers=config.num_layers,
                num_slots=config.stm_slots,
                attention=config.attention_config(config.memory_attention_heads),
                variant=config.memory_attention_variant,
                gate=config.gate,
                num_groups=config.memory_attention_groups,
                norm_eps=config.norm_eps,
            ),
            rope=self.decoder.positions.rope,
        )
        self.stm = ShortTermMemory(
            STMConfig(
                num_layers=config.num_layers,
                num_slots=config.stm_slots,
                dim=config.dim,
                init=config.stm_init,
                init_std=config.stm_init_std,
                seed=config.stm_seed,
            )
        )

    # -- memory ----------------------------------------------------------------------------------------------
    def initial_memory(self, batch_size: int = 1) -> torch.Tensor:
        """The documented initial STM (L, B, S, D): the same values on every call."""
        return self.stm.initial_state(batch_size)

    def project_memory(self, stm: torch.Tensor) -> list[MemoryKV | None]:
        """Per-layer memory cross-attention keys/values, computed once per turn and reused for every token."""
        self.stm.validate(stm)
        return self.decoder.project_memory(stm)

    def encode(
        self, interaction_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, validate: bool = True
    ) -> torch.Tensor:
        """Every encoder layer's hidden states ED (L, B, T, D) for a batch of finished interactions."""
        return self.encoder(interaction_ids, attention_mask, validate=validate).hidden_states

    def update_memory(
        self, stm: torch.Tensor, interaction_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        *, validate: bool = True,
    ) -> torch.Tensor:
        """STM' = MemAttn(STM, Encoder(interaction)). Out-of-place; rows with no real tokens keep their STM.

        ``validate=False`` skips the host-side id checks, so the update can be captured as a CUDA graph.
        """
        self.stm.validate(stm, interaction_ids.shape[0])
        encoded = self.encode(interaction_ids, attention_mask, validate=validate)
        return self.memory_attention(stm, encoded, attention_mask)

    # -- decoding --------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        stm: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Teacher-forced decoder pass over ``input_ids`` reading ``stm`` (default: the initial memory)."""
        if stm is None:
            stm = self.initial_memory(input_ids.shape[0])
        self.stm.validate(stm, input_ids.shape[0])
        return self.decoder(input_ids, attention_mask=attention_mask, memory=self.decoder.project_memory(stm))

    # -- parameters ------------------------------------------------------------------------------------------
    def memory_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the memory system: memory attention, STM initial state, decoder memory cross-attention."""
        yield from self.memory_attention.parameters()
        yield from self.stm.parameters()
        for layer in self.decoder.layers:
            if layer.has_memory:
                for module in (layer.memory_cross_attn, layer.cross_norm, layer.memory_norm):
                    yield from module.parameters()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """{"memory": memory-system parameters, "rest": everything else}; each parameter appears once."""
        memory_ids = {id(p) for p in self.memory_parameters()}
        memory = [p for p in self.parameters() if id(p) in memory_ids]
        rest = [p for p in self.parameters() if id(p) not in memory_ids]
        return {"memory": memory, "rest": rest}

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
