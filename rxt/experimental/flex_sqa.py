"""Flex-SQA: Sparse Query Attention over a sliding window plus global tokens, on ``flex_attention``.

Pattern (one definition, :func:`sliding_window_mask_mod`, used by both execution paths): with absolute token
positions q (query) and j (key), window W >= 1 and G = ``num_global`` >= 0,

    local(q, j)   = |q - j| < W                       bidirectional: W - 1 neighbours on each side and itself
                  = 0 <= q - j < W                    causal: itself and the W - 1 preceding tokens
    global(q, j)  = q < G or j < G                    the first G tokens attend and are attended everywhere
    allowed(q, j) = (local or global) and (j <= q if causal)

A window W >= T covers the whole sequence and reduces to full (causal or bidirectional) SQA. Keys and queries use
their absolute positions, so windows at the start and end of the sequence are simply shorter (no chunking; every
query has its own window, which fixes the reference code's per-chunk causality).

Execution paths (``backend``):
- "flex": ``torch.nn.attention.flex_attention`` with a ``BlockMask`` built from the mask_mod by
  ``create_block_mask``, compiled with ``torch.compile`` on CUDA (the fused sparse kernel: cost ~ T * (W + G)).
  On CPU flex runs eagerly (PyTorch's unfused reference path, which materialises the scores: for tests only).
- "sdpa": ``scaled_dot_product_attention`` with a dense boolean mask made by evaluating the *same* mask_mod on the
  (T, S) grid. O(T * S) memory; the reference and the fallback.
- "auto" (default): "flex" on CUDA where flex_attention imports and runs; "sdpa" otherwise and after any flex
  failure (the first failure is warned about once and recorded in ``self.fallback_reason``).

Head counts are SQA's (H_q < H, H_kv | H_q, grouped via ``enable_gqa``); any `AttentionConfig` works.

Use in (reactive) layers. :class:`FlexSQAAttention` subclasses `rxt.attention.Attention` with the same constructor
(plus ``window``, ``num_global``, ``backend``), parameters and ``forward`` signature, so it can replace a layer's
``self_attn`` (see :func:`use_flex_sqa`, which swaps every encoder/decoder self-attention of a model in place,
keeping the weights). Supported inside ``forward``:
- self-attention, causal or not, with an optional boolean ``mask`` (padding; head dim 1), intersected with the
  pattern (flex path: the mask tensor is read inside the mask_mod);
- cached decoding (``cache``): queries at ``positions`` against the cache's keys 0..S-1 with the pattern evaluated
  at absolute positions (dense SDPA mask, T_q x S, cheap for decode steps);
- cross-attention (``context`` or precomputed ``key_value``, e.g. memory cross-attention to STM) is passed through
  to plain dense attention: memory slots are a set, so a positional window has no meaning there;
- additive ``bias`` (legacy relative positions) forces the dense path.
Rows left with no visible key (padded queries) attend to everything on the dense path (as `rxt.masks` does) and
give zeros on the flex path; both are finite and such rows are ignored by callers.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.kv_cache import KVCache
from rxt.rope import RopeMode, RotaryEmbedding

FLEX_BACKENDS = ("auto", "flex", "sdpa")

try:  # flex_attention exists from torch 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    FLEX_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the torch build
    create_block_mask = flex_attention = None
    FLEX_AVAILABLE = False

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sliding_window_mask_mod(
    window: int, num_global: int = 0, *, causal: bool, q_offset: int = 0, key_mask: torch.Tensor | None = None
) -> MaskMod:
    """The pattern as a flex ``mask_mod(b, h, q_idx, kv_idx) -> bool`` (pure tensor ops, also works densely).

    ``q_offset`` shifts query indices to absolute positions (queries q_offset.. against keys 0..). ``key_mask``
    (B, 1, T_q or 1, S) boolean, True = may attend, is intersected (indexed with b and the broadcast dims at 0).
    """
    if window < 1:
        raise ValueError(f"window={window} must be >= 1")
    if num_global < 0:
        raise ValueError(f"num_global={num_global} must be >= 0")

    def mask_mod(b, h, q_idx, kv_idx):
        q = q_idx + q_offset
        diff = q - kv_idx
        local = ((diff >= 0) & (diff < window)) if causal else ((diff < window) & (diff > -window))
        allowed = local | (q < num_global) | (kv_idx < num_global)
        if causal:
            allowed = allowed & (kv_idx <= q)
        if key_mask is not None:
            mb = b if key_mask.shape[0] > 1 else 0 * b
            mq = q_idx if key_mask.shape[2] > 1 else 0 * q_idx
            allowed = allowed & key_mask[mb, 0, mq, kv_idx]
        return allowed

    return mask_mod


def dense_mask(mask_mod: MaskMod, q_len: int, kv_len: int, device, batch: int = 1) -> torch.Tensor:
    """Evaluate ``mask_mod`` on the full grid: (batch, 1, q_len, kv_len) boolean."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.zeros(1, dtype=torch.long, device=device)[None, :, None, None]
    q = torch.arange(q_len, device=device)[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    return mask_mod(b, h, q, kv).expand(batch, 1, q_len, kv_len)


def _on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    return torch.compile(flex_attention, dynamic=False)


class FlexSQAAttention(Attention):
    """SQA (any head counts) restricted to a sliding window plus ``num_global`` global tokens.

    Args:
        cfg, rope, rope_mode: as :class:`rxt.attention.Attention` (same parameters and state-dict keys).
        window: W, see the module docstring (W >= T means full attention).
        num_global: G leading global tokens.
        backend: "auto", "flex" or "sdpa" (module docstring).
    """

    def __init__(
        self,
        cfg: AttentionConfig,
        *,
        rope: RotaryEmbedding | None = None,
        rope_mode: RopeMode | str = RopeMode.NONE,
        window: int = 128,
        num_global: int = 0,
        backend: str = "auto",
    ) -> None:
        super().__init__(cfg, rope=rope, rope_mode=rope_mode)
        if backend not in FLEX_BACKENDS:
            raise ValueError(f"backend={backend!r} must be one of {FLEX_BACKENDS}")
        if backend == "flex" and not FLEX_AVAILABLE:
            raise ValueError("backend='flex' needs torch.nn.attention.flex_attention (torch >= 2.5)")
        sliding_window_mask_mod(window, num_global, causal=False)  # validates
        self.window = window
        self.num_global = num_global
        self.backend = backend
        self.fallback_reason: str | None = None
        self._block_masks: dict[tuple, object] = {}

    # -- path selection ---------------------------------------------------------------------------------------
    def _wants_flex(self, q: torch.Tensor) -> bool:
        if self.backend == "sdpa" or not FLEX_AVAILABLE:
            return False
        if self.backend == "flex":
            return True
        return q.is_cuda and self.fallback_reason is None

    def _block_mask(self, mask_mod: MaskMod, key: tuple, batch: int, q_len: int, kv_len: int, device):
        if key[-1] is not None:  # a data-dependent mask (padding) is not cached
            return create_block_mask(
                mask_mod, batch, None, q_len, kv_len, device=device, _compile=_on_cuda(device)
            )
        found = self._block_masks.get(key)
        if found is None:
            if len(self._block_masks) >= 8:
                self._block_masks.clear()
            # compiled on CUDA: builds the block mask without materialising the (T, S) grid (256k tokens)
            found = create_block_mask(
                mask_mod, None, None, q_len, kv_len, device=device, _compile=_on_cuda(device)
            )
            self._block_masks[key] = found
        return found

    def _flex(self, q, k, v, mask_mod, key, batch) -> torch.Tensor:
        block_mask = self._block_mask(mask_mod, key, batch, q.shape[2], k.shape[2], q.device)
        fn = _compiled_flex() if q.is_cuda else flex_attention
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
            return fn(q, k, v, block_mask=block_mask, enable_gqa=self.num_query_heads != self.num_kv_heads)

    def windowed_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        causal: bool,
        mask: torch.Tensor | None = None,
        q_offset: int = 0,
        path: str | None = None,
    ) -> torch.Tensor:
        """Heads q (B, H_q, T, d), k/v (B, H_kv, S, d) -> (B, H_q, T, d) under the pattern (no projections).

        ``path`` forces "flex" or "sdpa"; default per ``backend``.
        """
        if mask is not None:
            if mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype != torch.bool:
                raise ValueError(
                    f"FlexSQAAttention: mask must be boolean (B, 1, T_q|1, S), got {tuple(mask.shape)}"
                )
            if mask.shape[-1] == 1 and k.shape[2] != 1:
                mask = mask.expand(*mask.shape[:-1], k.shape[2])
        mask_mod = sliding_window_mask_mod(
            self.window, self.num_global, causal=causal, q_offset=q_offset, key_mask=mask
        )
        batch = q.shape[0]
        use_flex = path == "flex" if path is not None else self._wants_flex(q)
        if use_flex and self.training and self.cfg.dropout > 0:
            use_flex = False  # flex_attention has no dropout
        if use_flex:
            key = (
                causal,
                q.shape[2],
                k.shape[2],
                q_offset,
                str(q.device),
                None if mask is None else id(mask),
            )
            if path == "flex" or self.backend == "flex":
                return self._flex(q, k, v, mask_mod, key, batch)
            try:
                return self._flex(q, k, v, mask_mod, key, batch)
            except Exception as exc:  # any flex/compile failure falls back to the dense path
                self.fallback_reason = f"{type(exc).__name__}: {exc}"[:500]
                warnings.warn(
                    f"FlexSQAAttention: flex_attention failed, using SDPA with a dense mask ({exc})",
                    stacklevel=2,
                )
        dense = dense_mask(mask_mod, q.shape[2], k.shape[2], q.device, batch if mask is not None else 1)
        dense = dense | ~dense.any(dim=-1, keepdim=True)  # never an empty row (no NaN), as rxt.masks
        dropout = self.cfg.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=dense, dropout_p=dropout, enable_gqa=self.num_query_heads != self.num_kv_heads
        )

    # -- forward ---------------------------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        context_positions: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_index: int = 0,
        key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Same contract as :meth:`rxt.attention.Attention.forward`; the window applies to self-attention only."""
        if key_value is not None or context is not None:
            return super().forward(
                x,
                context,
                positions=positions,
                context_positions=context_positions,
                mask=mask,
                causal=causal,
                bias=bias,
                key_value=key_value,
            )
        q = self.project_query(x, positions)
        k, v = self.project_key_value(x, positions)
        b, t, _ = x.shape
        if cache is not None:
            if positions is None:
                raise ValueError("FlexSQAAttention: cached self-attention needs explicit positions")
            k, v = cache.write(layer_index, k, v, positions)
            pos = positions if positions.dim() == 2 else positions[None].expand(b, -1)
            keys = torch.arange(k.shape[2], device=x.device)
            # the decoder's cached mask is causal already; evaluate the pattern at absolute positions
            pattern = sliding_window_mask_mod(self.window, self.num_global, causal=True)(
                None, None, pos[:, None, :, None], keys[None, None, None, :]
            )
            full = pattern if mask is None else pattern & mask
            return self.attend(q, k, v, mask=full | ~full.any(dim=-1, keepdim=True), bias=bias)
        if bias is not None:
            mask_mod = sliding_window_mask_mod(self.window, self.num_global, causal=causal)
            full = dense_mask(mask_mod, t, t, x.device)
            if mask is not None:
                full = full & mask
            return self.attend(q, k, v, mask=full | ~full.any(dim=-1, keepdim=True), bias=bias)
        out = self.windowed_attention(q, k, v, causal=causal, mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def extra_repr(self) -> str:
        return (
            f"num_query_heads={self.num_query_heads}, num_kv_heads={self.num_kv_heads}, window={self.window}, "
            f"num_global={self.num_global}, backend={self.backend}"
        )


def use_flex_sqa(model: nn.Module, *, window: int, num_global: int = 0, backend: str = "auto") -> int:
    """Replace every ``self_attn`` `Attention` of ``model``'s layers (encoder and decoder, reactive or classic)
    by a :class:`FlexSQAAttention` with the same config, RoPE and weights. Returns how many were replaced.

    Memory cross-attention and memory attention are left alone (they attend to sets of memory slots).
    """
    swaps = []
    for module in model.modules():
        attn = getattr(module, "self_attn", None)
        if isinstance(attn, Attention) and not isinstance(attn, FlexSQAAttention):
            swaps.append(module)
    for module in swaps:
        old = module.self_attn
        new = FlexSQAAttention(
            old.cfg,
            rope=old.rope,
            rope_mode=old.rope_mode,
            window=window,
            num_global=num_global,
            backend=backend,
        )
        new.load_state_dict(old.state_dict())
        p = next(old.parameters())
        module.self_attn = new.to(device=p.device, dtype=p.dtype)
    return len(swaps)
