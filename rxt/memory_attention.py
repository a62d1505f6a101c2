"""The memory-attention network (writes the encoded interaction into the STM) and its variant registry.

Shapes: STM (L, B, S, D); encoded data ED (L, B, T, D), every encoder layer's hidden states; ``key_valid``
(B, T) bool, True for real tokens.

Main step, per layer l (every variant ends with it)::

    U_l   = Attn_l(q = NormQ_l(X_l), k = v = NormE_l(ED_l), key mask = padding)     RoPE on the keys only
    STM_l' = Gate_l(X_l, U_l)

RoPE rotates only the keys: the encoded tokens are a sequence, the memory slots are a set (no positions).

Variants (registry name -> class), differing in X_l, the input of the main step:

- "simple":          X_l = STM_l.
- "self":            X_l = PreGate_l(STM_l, SelfAttn_l(Norm(STM_l)))      (slots attend to their own layer)
- "interlayer":      X_l = PreGate_l(STM_l, Attn_l(q = Norm(STM_l), kv = Norm(mean_l STM)))
- "self-interlayer": as interlayer with kv = Norm(g_l * STM_l + (1 - g_l) * mean_l STM), g_l a learned sigmoid
                     gate (a `ResidualGate` of the configured kind, initialised at g = 0.5).
- "grouped-self-interlayer": as self-interlayer, but the mean is over the layer's group: the L layers are
                     split into ``num_groups`` groups of L / num_groups consecutive layers.

The first-step attention uses no RoPE. Means are over the layer axis (dim 0), never over the batch, so every
variant is correct for any batch size. A row whose encoded tokens are all padding keeps its memory unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.gates import GateConfig, ResidualGate
from rxt.masks import key_padding_mask
from rxt.memory_attention_stacked import (
    shared_key_value,
    stackable,
    stacked_attention,
    stacked_gate,
    stacked_key_bias,
    stacked_key_value,
    stacked_rms_norm,
    stacked_weights,
)
from rxt.rope import RotaryEmbedding

#: Registry name -> class. Filled by :func:`register_memory_attention`.
MEMORY_ATTENTION_VARIANTS: dict[str, type[MemoryAttentionNetwork]] = {}


def register_memory_attention(name: str):
    """Class decorator: register a `MemoryAttentionNetwork` subclass under ``name``."""

    def decorator(cls: type[MemoryAttentionNetwork]) -> type[MemoryAttentionNetwork]:
        existing = MEMORY_ATTENTION_VARIANTS.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"memory-attention variant {name!r} is already registered to {existing.__name__}"
            )
        MEMORY_ATTENTION_VARIANTS[name] = cls
        cls.variant_name = name
        return cls

    return decorator


def _check_variant(name: str) -> None:
    if name not in MEMORY_ATTENTION_VARIANTS:
        raise ValueError(
            f"MemoryAttentionConfig.variant={name!r} is unknown; "
            f"choose one of {sorted(MEMORY_ATTENTION_VARIANTS)}"
        )


@dataclass
class MemoryAttentionConfig:
    """Configuration of the memory-attention network.

    Attributes:
        num_layers: L, memory layers (equal to the encoder's layer count).
        num_slots: S, slots per layer.
        attention: shape of every attention layer (its ``dim`` is D).
        variant: registry name, one of :data:`MEMORY_ATTENTION_VARIANTS`.
        gate: residual gate of every layer (main step and first step).
        num_groups: number of layer groups for "grouped-self-interlayer" (must divide num_layers).
        norm_eps: epsilon of the RMSNorms.
    """

    num_layers: int
    num_slots: int
    attention: AttentionConfig
    variant: str = "interlayer"
    gate: GateConfig = field(default_factory=GateConfig)
    num_groups: int = 2
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_slots", "num_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"MemoryAttentionConfig.{name}={getattr(self, name)} must be >= 1")
        if not self.norm_eps > 0:
            raise ValueError(f"MemoryAttentionConfig.norm_eps={self.norm_eps} must be > 0")
        _check_variant(self.variant)

    @property
    def dim(self) -> int:
        return self.attention.dim


class MemoryAttentionNetwork(nn.Module):
    """Base class: the main step (see the module docstring). Subclasses override :meth:`pre_step`."""

    variant_name: str = ""

    def __init__(self, cfg: MemoryAttentionConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__()
        self.cfg = cfg
        L, S, D = cfg.num_layers, cfg.num_slots, cfg.dim
        mode = "key" if rope is not None else "none"
        self.attention = nn.ModuleList(Attention(cfg.attention, rope=rope, rope_mode=mode) for _ in range(L))
        self.query_norm = nn.ModuleList(nn.RMSNorm(D, eps=cfg.norm_eps) for _ in range(L))
        self.input_norm = nn.ModuleList(nn.RMSNorm(D, eps=cfg.norm_eps) for _ in range(L))
        self.gate = nn.ModuleList(ResidualGate(cfg.gate, S, D) for _ in range(L))

    def pre_step(self, stm: torch.Tensor) -> torch.Tensor:
        """The main step's input X (L, B, S, D) from the STM (L, B, S, D). Identity here ("simple")."""
        return stm

    def _validate(
        self, stm: torch.Tensor, encoded: torch.Tensor, key_valid: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        cfg = self.cfg
        if stm.dim() != 4 or encoded.dim() != 4:
            raise ValueError(
                f"memory attention expects stm (L, B, S, D) and encoded (L, B, T, D); got stm "
                f"{tuple(stm.shape)} and encoded {tuple(encoded.shape)}"
            )
        if stm.shape[0] != cfg.num_layers or encoded.shape[0] != cfg.num_layers:
            raise ValueError(
                f"memory attention has {cfg.num_layers} layers; stm has {stm.shape[0]} layers "
                f"{tuple(stm.shape)} and encoded has {encoded.shape[0]} layers {tuple(encoded.shape)}"
            )
        if stm.shape[2] != cfg.num_slots or stm.shape[3] != cfg.dim:
            raise ValueError(
                f"stm must be (L, B, S, D) = ({cfg.num_layers}, B, {cfg.num_slots}, {cfg.dim}); "
                f"got {tuple(stm.shape)}"
            )
        if encoded.shape[3] != cfg.dim:
            raise ValueError(f"encoded must be (L, B, T, D) with D = {cfg.dim}; got {tuple(encoded.shape)}")
        batch = encoded.shape[1]
        if stm.shape[1] != batch:
            if stm.shape[1] != 1:
                raise ValueError(
                    f"stm batch {stm.shape[1]} {tuple(stm.shape)} does not match encoded batch {batch} "
                    f"{tuple(encoded.shape)} (a stm with B = 1 is broadcast)"
                )
            stm = stm.expand(-1, batch, -1, -1)
        if key_valid is not None and tuple(key_valid.shape) != (batch, encoded.shape[2]):
            raise ValueError(
                f"key_valid must be (B, T) = ({batch}, {encoded.shape[2]}); got {tuple(key_valid.shape)}"
            )
        return stm, key_valid

    def forward(
        self, stm: torch.Tensor, encoded: torch.Tensor, key_valid: torch.Tensor | None = None, *,
        weights: dict[str, torch.Tensor] | None = None, key_bias: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The new STM (L, B, S, D), out-of-place.

        ``stm`` (L, B, S, D) (or (L, 1, S, D), broadcast to the batch), ``encoded`` (L, B, T, D) and
        ``key_valid`` (B, T) (None: every token is real). Rows with no valid token keep their memory. The L layers
        run as one batched computation (`rxt.memory_attention_stacked`) when every attention takes the SDPA path,
        else layer by layer (`layerwise_forward`, the same maths). ``weights``: `stacked_weights()` taken once for
        a chain of calls (None stacks them here; the layer-by-layer path reads the modules).

        ``key_bias`` (L * B, 1, 1, T), instead of ``key_valid``: the stacked path's attention bias, precomputed
        once for a chain of calls (`stacked_key_bias`). Rows without a valid token are then NOT kept here: the
        caller keeps their memory (the SMAT chain keeps every row of an ended or empty turn). ``key_value``: the
        main step's keys and values of ``encoded``, precomputed for a chain (`stacked_key_value`, one turn's),
        needs ``weights``.
        """
        if key_value is not None and (weights is None or not self.stackable()):
            raise ValueError("memory attention: key_value needs the stacked path and its weights")
        if key_bias is not None:
            if key_valid is not None or not self.stackable():
                raise ValueError("memory attention: key_bias replaces key_valid and needs the stacked path "
                                 "(every attention on SDPA)")
            rows, keys = self.cfg.num_layers * encoded.shape[1], encoded.shape[2]
            if tuple(key_bias.shape) != (rows, 1, 1, keys):
                raise ValueError(f"memory attention: key_bias must be (L * B, 1, 1, T) = ({rows}, 1, 1, {keys}); "
                                 f"got {tuple(key_bias.shape)}")
        if not self.stackable():
            return self._new_memory(stm, encoded, key_valid, None)
        return self._new_memory(stm, encoded, key_valid, self.stacked_weights() if weights is None else weights,
                                key_bias, key_value)

    def layerwise_forward(
        self, stm: torch.Tensor, encoded: torch.Tensor, key_valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`forward` computed layer after layer (the reference the stacked path is tested against)."""
        return self._new_memory(stm, encoded, key_valid, None)

    def stackable(self) -> bool:
        """Whether `forward` runs the layers batched: every attention on SDPA and no hook on a per-layer module
        (the batched path never calls them, so a hook, e.g. `training.memory_diagnostics` reading the gates,
        gets the layer-by-layer path)."""
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in self.modules() if m is not self)
        return not hooked and stackable([*self.attention, *getattr(self, "pre_attention", [])])

    def stacked_weights(self) -> dict[str, torch.Tensor]:
        """The per-layer parameters stacked over the layers (`rxt.memory_attention_stacked.stacked_weights`), with
        every RMSNorm weight folded into the projection its output feeds (`norm_folds`): the stacked path
        normalises without weights."""
        return stacked_weights(self, self.cfg.num_layers, self.norm_folds())

    def norm_folds(self) -> dict[str, str]:
        """Projection -> the RMSNorm whose output it reads (and nothing else reads), for `stacked_weights`."""
        return {"attention.q_proj": "query_norm", "attention.kv_proj": "input_norm"}

    def stacked_key_bias(self, key_valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``key_valid`` (..., B, T) -> the ``key_bias`` (..., L * B, 1, 1, T) of `forward` (0 where a key is
        valid, -inf where not; a row with no valid key attends to all, as `rxt.masks.key_padding_mask`), in the
        queries' ``dtype``. Over all turns of a chain at once: a few ops instead of a few per turn."""
        return stacked_key_bias(key_valid, self.cfg.num_layers, dtype)

    def stacked_key_value(self, encoded: torch.Tensor, weights: dict[str, torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The main step's keys and values of M turns' ``encoded`` (L, M, B, T, D) at once, (M, L * B, H_kv, T, d)
        each: they read only the encoded data, never the STM, so a chain computes them before its first turn and
        passes turn t's as `forward`'s ``key_value``."""
        kv = stacked_rms_norm(None, self.cfg.norm_eps, encoded)  # input_norm's weight: folded into kv_proj
        return stacked_key_value(self.attention[0], weights, "attention", kv)

    def _new_memory(
        self, stm: torch.Tensor, encoded: torch.Tensor, key_valid: torch.Tensor | None,
        weights: dict[str, torch.Tensor] | None, key_bias: torch.Tensor | None = None,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The new memory: layers batched with the stacked ``weights``, layer by layer when None."""
        stm, key_valid = self._validate(stm, encoded, key_valid)
        mask = key_padding_mask(key_valid.to(encoded.device)) if key_valid is not None else key_bias
        if weights is not None:
            x = self.stacked_pre_step(stm, weights)
            eps = self.cfg.norm_eps
            q = stacked_rms_norm(None, eps, x)  # query_norm's weight: folded into q_proj (`norm_folds`)
            if key_value is None:
                key_value = tuple(t[0] for t in self.stacked_key_value(encoded.unsqueeze(1), weights))
            update = stacked_attention(self.attention[0], weights, "attention", q, mask=mask, key_value=key_value)
            new = stacked_gate(self.cfg.gate, weights, "gate", x, update)
        else:
            x = self.pre_step(stm)
            layers = []
            for l in range(self.cfg.num_layers):
                q = self.query_norm[l](x[l])
                kv = self.input_norm[l](encoded[l])
                update = self.attention[l](q, kv, mask=mask)
                layers.append(self.gate[l](x[l], update))
            new = torch.stack(layers)
        if key_valid is not None:
            has_tokens = key_valid.to(encoded.device).bool().any(dim=1)  # (B,)
            new = torch.where(has_tokens[None, :, None, None], new, stm)
        return new

    def stacked_pre_step(self, stm: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """`pre_step` with the layers batched (``weights``: `stacked_weights`). Identity here ("simple")."""
        return stm


@register_memory_attention("simple")
class SimpleMemoryAttention(MemoryAttentionNetwork):
    """Main step only: X_l = STM_l."""


class _PreAttentionMemoryAttention(MemoryAttentionNetwork):
    """Variants whose first step is X_l = PreGate_l(STM_l, PreAttn_l(q = Norm(STM_l), kv = Norm(K_l)))."""

    #: Whether the first step's keys are the queries' own layer (self-attention: one norm serves both).
    self_attention = False

    def __init__(self, cfg: MemoryAttentionConfig, rope: RotaryEmbedding | None) -> None:
        super().__init__(cfg, rope)
        L, S, D = cfg.num_layers, cfg.num_slots, cfg.dim
        # No RoPE in the first step: both sides are memory slots, which form a set.
        self.pre_attention = nn.ModuleList(Attention(cfg.attention) for _ in range(L))
        self.pre_query_norm = nn.ModuleList(nn.RMSNorm(D, eps=cfg.norm_eps) for _ in range(L))
        if not self.self_attention:
            self.pre_key_norm = nn.ModuleList(nn.RMSNorm(D, eps=cfg.norm_eps) for _ in range(L))
        self.pre_gate = nn.ModuleList(ResidualGate(cfg.gate, S, D) for _ in range(L))

    def layer_context(self, stm: torch.Tensor) -> torch.Tensor | None:
        """Computed once per forward from the whole STM (e.g. layer means), passed to :meth:`key_source`."""
        return None

    def key_source(self, stm: torch.Tensor, layer: int, context: torch.Tensor | None) -> torch.Tensor:
        """Un-normalised keys/values (B, S, D) of the first step for ``layer``."""
        raise NotImplementedError

    def pre_step(self, stm: torch.Tensor) -> torch.Tensor:
        context = self.layer_context(stm)
        layers = []
        for l in range(self.cfg.num_layers):
            q = self.pre_query_norm[l](stm[l])
            if self.self_attention:
                update = self.pre_attention[l](q)
            else:
                kv = self.pre_key_norm[l](self.key_source(stm, l, context))
                update = self.pre_attention[l](q, kv)
            layers.append(self.pre_gate[l](stm[l], update))
        return torch.stack(layers)

    def key_sources(self, stm: torch.Tensor, context: torch.Tensor | None,
                    weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """`key_source` of every layer at once, (L, B, S, D)."""
        raise NotImplementedError

    def norm_folds(self) -> dict[str, str]:
        keys = "pre_query_norm" if self.self_attention else "pre_key_norm"  # self-attention: one norm serves both
        return {**super().norm_folds(), "pre_attention.q_proj": "pre_query_norm", "pre_attention.kv_proj": keys}

    def shared_key_source(self, stm: torch.Tensor) -> torch.Tensor | None:
        """The first step's keys (B, S, D) when every layer reads the same (None: per layer, `key_sources`)."""
        return None

    def stacked_pre_step(self, stm: torch.Tensor, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        eps = self.cfg.norm_eps
        q = stacked_rms_norm(None, eps, stm)  # the norms' weights: folded into the projections (`norm_folds`)
        attention = self.pre_attention[0]
        if self.self_attention:
            update = stacked_attention(attention, weights, "pre_attention", q)
        elif (shared := self.shared_key_source(stm)) is not None:  # normalised and projected once, not L times
            kv = shared_key_value(attention, weights, "pre_attention", stacked_rms_norm(None, eps, shared))
            update = stacked_attention(attention, weights, "pre_attention", q, key_value=kv)
        else:
            kv = stacked_rms_norm(None, eps, self.key_sources(stm, self.layer_context(stm), weights))
            update = stacked_attention(attention, weights, "pre_attention", q, kv)
        return stacked_gate(self.cfg.gate, weights, "pre_gate", stm, update)


@register_memory_attention("self")
class SelfMemoryAttention(_PreAttentionMemoryAttention):
    """First step: memory self-attention within each layer, X_l = PreGate(STM_l, SelfAttn(Norm STM_l))."""

    self_attention = True


@register_memory_attention("interlayer")
class InterlayerMemoryAttention(_PreAttentionMemoryAttention):
    """First step: slots attend to the mean over layers, kv = Norm(mean_l STM)."""

    def layer_context(self, stm: torch.Tensor) -> torch.Tensor:
        return stm.mean(dim=0)  # (B, S, D): mean over the layers, never over the batch

    def key_source(self, stm: torch.Tensor, layer: int, context: torch.Tensor | None) -> torch.Tensor:
        return context

    def shared_key_source(self, stm: torch.Tensor) -> torch.Tensor:
        return self.layer_context(stm)


@register_memory_attention("self-interlayer")
class SelfInterlayerMemoryAttention(_PreAttentionMemoryAttention):
    """First step keys: kv_l = Norm(g_l * STM_l + (1 - g_l) * mean), mean over all layers (one group).

    g_l is a `ResidualGate` of the configured kind and granularity with a sigmoid activation and init 0
    (g = 0.5), applied as ``mix_gate[l](mean, STM_l)`` = (1 - g) * mean + g * STM_l.
    """

    def __init__(self, cfg: MemoryAttentionConfig, rope: RotaryEmbedding | None) -> None:
        groups = self._group_count_for(cfg)
        if cfg.num_layers % groups != 0:
            raise ValueError(
                f"MemoryAttentionConfig.num_groups={groups} must divide num_layers={cfg.num_layers}: the "
                f"'{type(self).variant_name}' variant splits the layers into num_groups groups of "
                f"num_layers / num_groups consecutive layers"
            )
        super().__init__(cfg, rope)
        self.group_size = cfg.num_layers // groups
        mix = GateConfig(kind=cfg.gate.kind, activation="sigmoid", per=cfg.gate.per, init_bias=0.0)
        self.mix_gate = nn.ModuleList(
            ResidualGate(mix, cfg.num_slots, cfg.dim) for _ in range(cfg.num_layers)
        )

    @classmethod
    def _group_count_for(cls, cfg: MemoryAttentionConfig) -> int:
        return 1

    def layer_context(self, stm: torch.Tensor) -> torch.Tensor:
        L, B, S, D = stm.shape
        groups = L // self.group_size
        return stm.reshape(groups, self.group_size, B, S, D).mean(dim=1)  # (G, B, S, D): mean within groups

    def key_source(self, stm: torch.Tensor, layer: int, context: torch.Tensor | None) -> torch.Tensor:
        mean = context[layer // self.group_size]
        return self.mix_gate[layer](mean, stm[layer])

    def key_sources(self, stm: torch.Tensor, context: torch.Tensor | None,
                    weights: dict[str, torch.Tensor]) -> torch.Tensor:
        means = context.repeat_interleave(self.group_size, dim=0)  # (L, B, S, D): layer l's group mean
        return stacked_gate(self.mix_gate[0].cfg, weights, "mix_gate", means, stm)


@register_memory_attention("grouped-self-interlayer")
class GroupedSelfInterlayerMemoryAttention(SelfInterlayerMemoryAttention):
    """Self-interlayer with the mean taken within ``num_groups`` groups of num_layers / num_groups consecutive
    layers (layer l belongs to group l // (num_layers / num_groups))."""

    @classmethod
    def _group_count_for(cls, cfg: MemoryAttentionConfig) -> int:
        return cfg.num_groups


def build_memory_attention(
    cfg: MemoryAttentionConfig, rope: RotaryEmbedding | None
) -> MemoryAttentionNetwork:
    """Build the network ``cfg.variant`` names. ``rope`` rotates the encoded keys of the main step (None: no
    positions)."""
    _check_variant(cfg.variant)
    return MEMORY_ATTENTION_VARIANTS[cfg.variant](cfg, rope)
