"""Model configs: one dataclass per model family, with named presets.

`TransformerConfig` describes a plain stack (used by the classic encoder/decoder LMs and the stateless
baseline); `RxTConfig` adds the Short-Term Memory, memory cross-attention and memory-attention network.

Head counts are given per attention role either as a variant name of `rxt.attention_config` ("mha", "gqa",
"mqa", "sqa", "ssqa", "xsqa", relative to ``num_heads``) or as an explicit ``[H_q, H_kv]`` pair.

Presets (parameter counts with the default 8,192-token vocabulary, LM head tied to the shared embedding;
`RxT.num_parameters()` prints the exact figure):

=======  =====  ======  =====  ======  =====  ========  ==============================================
preset   dim    layers  heads  slots   ffn    seq len   size
=======  =====  ======  =====  ======  =====  ========  ==============================================
tiny     32     2       4      8       64     64        tests only (~70k)
nano     256    6       8      256     768    256       ~12.5M, like RxT-Alpha Nano
micro    320    8       8      320     1152   512       ~27M, like RxT-Alpha Micro
mini     640    10      16     512     1664   1024      ~103M, like RxT-Alpha Mini
=======  =====  ======  =====  ======  =====  ========  ==============================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rxt.attention_config import ATTENTION_VARIANTS, AttentionConfig
from rxt.config_io import config_from_dict, config_to_dict
from rxt.ffn import FFNConfig
from rxt.gates import GateConfig

POSITION_ENCODINGS = ("rope", "absolute", "relative", "none")

HeadSpec = str | tuple[int, int] | list[int]


@dataclass
class TransformerConfig:
    """A stack of pre-norm transformer layers over a token embedding."""

    vocab_size: int = 8192
    dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    max_seq_len: int = 256
    self_attention: HeadSpec = "gqa"
    ffn_hidden_dim: int = 768
    ffn_activation: str = "silu"
    ffn_gated: bool = True
    num_experts: int = 0
    top_k: int = 1
    position_encoding: str = "rope"
    rope_base: float = 10_000.0
    dropout: float = 0.0
    norm_eps: float = 1e-6
    tie_lm_head: bool = True
    attention_backend: str = "sdpa"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "num_layers", "num_heads", "max_seq_len", "ffn_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)} must be >= 1")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(
                f"{type(self).__name__}.position_encoding={self.position_encoding!r} must be one of "
                f"{POSITION_ENCODINGS}"
            )
        if isinstance(self.self_attention, list):
            self.self_attention = tuple(self.self_attention)
        # Build every sub-config once so a bad value fails here, naming the field, not deep inside a layer.
        self.attention_config(self.self_attention)
        self.ffn_config()

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def attention_config(self, spec: HeadSpec) -> AttentionConfig:
        common = dict(dropout=self.dropout, backend=self.attention_backend)
        if isinstance(spec, str):
            if spec not in ATTENTION_VARIANTS:
                raise ValueError(f"attention variant {spec!r} is unknown; choose one of {ATTENTION_VARIANTS}")
            return AttentionConfig.variant(spec, self.dim, self.num_heads, **common)
        if len(spec) != 2:
            raise ValueError(f"attention head spec {spec!r} must be a variant name or [H_q, H_kv]")
        return AttentionConfig(self.dim, self.num_heads, int(spec[0]), int(spec[1]), **common)

    def ffn_config(self, *, num_experts: int | None = None, hidden_dim: int | None = None) -> FFNConfig:
        experts = self.num_experts if num_experts is None else num_experts
        return FFNConfig(
            dim=self.dim,
            hidden_dim=hidden_dim or self.ffn_hidden_dim,
            activation=self.ffn_activation,
            gated=self.ffn_gated,
            dropout=self.dropout,
            num_experts=experts,
            top_k=self.top_k if experts else 1,
        )

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return config_from_dict(cls, data)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        presets = _PRESETS
        if name not in presets:
            raise ValueError(f"preset {name!r} is unknown; choose one of {sorted(presets)}")
        base = {k: v for k, v in presets[name].items() if k in cls.__dataclass_fields__}
        return cls(**{**base, **overrides})


@dataclass
class RxTConfig(TransformerConfig):
    """A Reactive Transformer: encoder, decoder with memory cross-attention, memory attention and STM.

    The encoder, the STM and the decoder have the same number of layers: encoder layer l's output updates
    STM layer l, which decoder layer l reads (unless l is in ``memory_free_layers``).
    """

    self_attention: HeadSpec = "sqa"
    cross_attention: HeadSpec = "sqa"
    memory_attention_heads: HeadSpec = "sqa"
    encoder_ffn_hidden_dim: int | None = None
    stm_slots: int = 256
    stm_init: str = "learned"
    stm_init_std: float = 0.02
    stm_seed: int = 0
    memory_attention_variant: str = "interlayer"
    memory_attention_groups: int = 2
    gate: GateConfig = field(default_factory=GateConfig)
    memory_free_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("cross_attention", "memory_attention_heads", "memory_free_layers"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if isinstance(self.gate, dict):
            self.gate = config_from_dict(GateConfig, self.gate)
        if self.stm_slots < 1:
            raise ValueError(f"RxTConfig.stm_slots={self.stm_slots} must be >= 1")
        bad = [i for i in self.memory_free_layers if not 0 <= i < self.num_layers]
        if bad:
            raise ValueError(
                f"RxTConfig.memory_free_layers={list(self.memory_free_layers)} has layer(s) {bad} outside "
                f"0..{self.num_layers - 1}"
            )
        self.attention_config(self.cross_attention)
        self.attention_config(self.memory_attention_heads)


_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=128, dim=32, num_layers=2, num_heads=4, max_seq_len=64, ffn_hidden_dim=64, stm_slots=8
    ),
    "nano": dict(
        vocab_size=8192, dim=256, num_layers=6, num_heads=8, max_seq_len=256, ffn_hidden_dim=768, stm_slots=256
    ),
    "micro": dict(
        vocab_size=8192, dim=320, num_layers=8, num_heads=8, max_seq_len=512, ffn_hidden_dim=1152, stm_slots=320
    ),
    "mini": dict(
        vocab_size=8192, dim=640, num_layers=10, num_heads=16, max_seq_len=1024, ffn_hidden_dim=1664,
        stm_slots=512,
    ),
}

PRESET_NAMES = tuple(_PRESETS)

