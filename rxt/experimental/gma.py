"""Grouped MoE Attention (GMA) and Deep MoE Attention (DMA): attention whose K/V heads (and query heads) are routed.

Experimental research modules for comparisons with GQA/SQA, not a recommended default: the original author
reported them slower and worse than GQA, and this formulation makes their extra cost explicit.

Notation: B batch, T tokens, D model dim, d head dim, H_q query heads, H_kv candidate key/value heads ("experts"),
k = ``kv_top_k`` (1 <= k <= H_kv, k divides H_q), G = H_q / k query heads per routing slot.

GMA, per query token t (all tensor ops, no Python loop over tokens or heads):

    p_t = softmax(router(x_t))                       (H_kv,)   router: Linear(D, H_kv), softmax in >= float32
    e_t = the top-k head indices of p_t, sorted ascending: e_t1 < e_t2 < ... < e_tk
    w_t = p_t[e_t] / sum(p_t[e_t])                   (k,)      renormalised top-k weights
    query head h belongs to slot j(h) = h // G; for query token t it reads K/V head e_{t, j(h)}:
        o_h,t = softmax_s(q_h,t . K[e_{t,j(h)}]_s / sqrt(d) + mask) @ V[e_{t,j(h)}]
        o_h,t <- (k * w_{t,j(h)}) * o_h,t            gate, mean 1 over the k slots; omitted when k == H_kv
    y_t = o_proj(concat_h o_h,t)

Keys and values of *all* H_kv heads are projected for every token (the keys a query reads must exist whatever
head it picks). Because the selected heads are sorted, slot j can only pick heads j .. j + M - 1 with
M = H_kv - k + 1 candidates. The kernel attends each query head to its slot's M candidate heads in one SDPA call
(query heads repeated M times, K/V candidate heads picked with ``index_select``) and keeps the picked one with
``torch.gather``. The attention cost is therefore M times GQA's with H_q query and k K/V heads.

With k == H_kv there is one candidate per slot (e_t = 0..H_kv-1 for every token), no gate, and slot j(h) = h // G
is exactly SDPA's GQA head mapping: GMA then computes *exactly* GQA with the same q/k/v/o weights (tested).

Load balancing (Switch style, as the MoE FFN): loss = H_kv * sum_e f_e * P_e with f_e the fraction of the N*k
(token, head) assignments that picked head e and P_e the mean router probability over all N = B*T tokens
(padding included: the module does not know which rows are padding). Times ``balance_loss_weight``, stored on
``self.aux_loss`` after every forward, collected by :func:`rxt.aux_loss.collect_aux_loss`.

DMA adds a second router over the H_q query heads (top ``query_top_k`` per token, renormalised weights). Unselected
query heads are zeroed before the output projection, selected ones gated by (k_q * w); with k_q == H_q the gate is
omitted. This is the *dense* formulation: every query head is still computed, so DMA costs GMA plus a router; it
models the routing, not a FLOP saving. Its aux loss is the sum of both balancing losses. With k == H_kv and
k_q == H_q DMA equals GQA too.

Supported: self-attention with ``positions``, boolean ``mask`` (head dim 1, e.g. `rxt.masks`), ``causal``; the
same for a KV cache (``cache``) and for ``context``/``key_value`` cross-attention, where the query tokens are
routed over the given K/V heads. Not supported: additive ``bias`` with routing (raises), the flash backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.kv_cache import KVCache
from rxt.rope import RopeMode, RotaryEmbedding


def _switch_balance_loss(probs: torch.Tensor, top_idx: torch.Tensor, num_experts: int) -> torch.Tensor:
    """E * sum_e f_e P_e for router probabilities (N, E) and chosen indices (N, k)."""
    n, k = top_idx.shape
    counts = torch.bincount(top_idx.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / max(n * k, 1)
    return num_experts * (fraction * probs.mean(dim=0)).sum()


def _route(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (..., E) -> probs (float32+), sorted top-k indices (..., k), renormalised weights (..., k)."""
    probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)
    _, idx = probs.topk(k, dim=-1)
    idx, _ = idx.sort(dim=-1)
    weights = probs.gather(-1, idx)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return probs, idx, weights


class GroupedMoEAttention(Attention):
    """GMA: each query token's query-head slots read the top-k routed K/V heads (see the module docstring).

    Args:
        cfg: head counts; ``cfg.num_kv_heads`` is the number of candidate K/V heads H_kv.
        kv_top_k: k, K/V heads selected per token (default H_kv // 2, at least 1). Must divide H_q.
        balance_loss_weight: scale of the Switch balancing loss stored on ``aux_loss``.
    """

    aux_loss: torch.Tensor | None

    def __init__(
        self,
        cfg: AttentionConfig,
        *,
        rope: RotaryEmbedding | None = None,
        rope_mode: RopeMode | str = RopeMode.NONE,
        kv_top_k: int | None = None,
        balance_loss_weight: float = 0.01,
    ) -> None:
        super().__init__(cfg, rope=rope, rope_mode=rope_mode)
        if cfg.backend != "sdpa":
            raise ValueError(f"{type(self).__name__} supports only the 'sdpa' backend, got {cfg.backend!r}")
        k = max(1, cfg.num_kv_heads // 2) if kv_top_k is None else kv_top_k
        if not 1 <= k <= cfg.num_kv_heads:
            raise ValueError(f"kv_top_k={k} must be in [1, num_kv_heads={cfg.num_kv_heads}]")
        if cfg.num_query_heads % k != 0:
            raise ValueError(f"kv_top_k={k} must divide num_query_heads={cfg.num_query_heads}")
        self.kv_top_k = k
        self.balance_loss_weight = balance_loss_weight
        self.kv_router = nn.Linear(cfg.dim, cfg.num_kv_heads, bias=False)
        # index_select table: candidate m of slot j is K/V head j + m, laid out (m, j) -> m * k + j
        m = cfg.num_kv_heads - k + 1
        cand = (torch.arange(m)[:, None] + torch.arange(k)[None, :]).reshape(-1)
        self.register_buffer("_candidates", cand, persistent=False)
        self.aux_loss = None

    @property
    def num_candidates(self) -> int:
        return self.num_kv_heads - self.kv_top_k + 1

    # -- routing ---------------------------------------------------------------------------------------------
    def _kv_routing(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """x (B, T, D) -> (pick (B, H_q, T) candidate index or None, gate (B, H_q, T) or None, balance loss)."""
        b, t, _ = x.shape
        k, g = self.kv_top_k, self.num_query_heads // self.kv_top_k
        probs, idx, weights = _route(self.kv_router(x), k)  # (B, T, E), (B, T, k), (B, T, k)
        loss = _switch_balance_loss(probs.reshape(b * t, -1), idx.reshape(b * t, k), self.num_kv_heads)
        if k == self.num_kv_heads:
            return None, None, loss  # identity routing: exactly GQA
        slot = torch.arange(k, device=x.device)
        pick = (idx - slot).transpose(1, 2).repeat_interleave(g, dim=1)  # (B, H_q, T) in [0, M)
        gate = (k * weights).transpose(1, 2).repeat_interleave(g, dim=1)  # (B, H_q, T)
        return pick, gate, loss

    def _routed_attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pick: torch.Tensor | None,
        *,
        mask: torch.Tensor | None,
        causal: bool,
    ) -> torch.Tensor:
        """q (B, H_q, T, d), k/v (B, H_kv, S, d) -> per-head outputs (B, H_q, T, d) before the gate."""
        if mask is not None and mask.dim() == 4 and mask.shape[1] != 1:
            raise ValueError(
                f"{type(self).__name__}: mask must have a head dimension of 1, got {tuple(mask.shape)}"
            )
        if causal and mask is not None:
            raise ValueError(f"{type(self).__name__}: pass causality inside `mask` when a mask is given")
        if causal and q.shape[2] != k.shape[2]:
            raise ValueError(f"{type(self).__name__}: causal=True needs as many queries as keys")
        dropout = self.cfg.dropout if self.training else 0.0
        hq, kk = self.num_query_heads, self.kv_top_k
        if pick is None:  # k == H_kv: one candidate per slot, the plain GQA call
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                enable_gqa=hq != self.num_kv_heads,
            )
        m = self.num_candidates
        b, _, t, d = q.shape
        k_cand = k.index_select(1, self._candidates)  # (B, M*k, S, d): candidate m of slot j at m*k + j
        v_cand = v.index_select(1, self._candidates)
        q_rep = q.repeat(1, m, 1, 1)  # (B, M*H_q, T, d): head m*H_q + h -> K/V m*k + h // G (SDPA GQA map)
        out = F.scaled_dot_product_attention(
            q_rep, k_cand, v_cand, attn_mask=mask, dropout_p=dropout, is_causal=causal, enable_gqa=hq != kk
        )
        out = out.view(b, m, hq, t, d)
        index = pick[:, None, :, :, None].expand(b, 1, hq, t, d)
        return out.gather(1, index).squeeze(1)  # (B, H_q, T, d)

    def _query_gate(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return None, None

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
        """Same contract as :meth:`rxt.attention.Attention.forward` (``bias`` unsupported); sets ``aux_loss``."""
        if bias is not None:
            raise ValueError(f"{type(self).__name__} does not support an additive attention bias")
        q = self.project_query(x, positions)
        if key_value is not None:
            k, v = key_value
        elif context is not None:
            k, v = self.project_key_value(context, context_positions)
        else:
            k, v = self.project_key_value(x, positions)
            if cache is not None:
                if positions is None:
                    raise ValueError(f"{type(self).__name__}: cached self-attention needs explicit positions")
                k, v = cache.write(layer_index, k, v, positions)
        pick, gate, loss = self._kv_routing(x)
        out = self._routed_attend(q, k, v, pick, mask=mask, causal=causal)
        if gate is not None:
            out = out * gate.unsqueeze(-1).to(out.dtype)
        q_gate, q_loss = self._query_gate(x)
        if q_gate is not None:
            out = out * q_gate.unsqueeze(-1).to(out.dtype)
        if q_loss is not None:
            loss = loss + q_loss
        self.aux_loss = loss * self.balance_loss_weight
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def extra_repr(self) -> str:
        return (
            f"num_query_heads={self.num_query_heads}, num_kv_heads={self.num_kv_heads}, kv_top_k={self.kv_top_k}, "
            f"candidates_per_slot={self.num_candidates}"
        )


class DeepMoEAttention(GroupedMoEAttention):
    """DMA: GMA plus a router that keeps the top ``query_top_k`` of the H_q query heads per token (dense gating).

    Args:
        query_top_k: query heads kept per token (default H_q // 2, at least 1); H_q keeps all (no gate).
        Other arguments as :class:`GroupedMoEAttention`.
    """

    def __init__(
        self,
        cfg: AttentionConfig,
        *,
        rope: RotaryEmbedding | None = None,
        rope_mode: RopeMode | str = RopeMode.NONE,
        kv_top_k: int | None = None,
        query_top_k: int | None = None,
        balance_loss_weight: float = 0.01,
    ) -> None:
        super().__init__(
            cfg, rope=rope, rope_mode=rope_mode, kv_top_k=kv_top_k, balance_loss_weight=balance_loss_weight
        )
        kq = max(1, cfg.num_query_heads // 2) if query_top_k is None else query_top_k
        if not 1 <= kq <= cfg.num_query_heads:
            raise ValueError(f"query_top_k={kq} must be in [1, num_query_heads={cfg.num_query_heads}]")
        self.query_top_k = kq
        self.query_router = nn.Linear(cfg.dim, cfg.num_query_heads, bias=False)

    def _query_gate(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """x (B, T, D) -> (gate (B, H_q, T): k_q * w on the selected heads, 0 elsewhere; or None) and its loss."""
        b, t, _ = x.shape
        kq, hq = self.query_top_k, self.num_query_heads
        probs, idx, weights = _route(self.query_router(x), kq)
        loss = _switch_balance_loss(probs.reshape(b * t, -1), idx.reshape(b * t, kq), hq)
        if kq == hq:
            return None, loss
        gate = torch.zeros_like(probs).scatter(-1, idx, kq * weights)  # (B, T, H_q)
        return gate.transpose(1, 2), loss

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, query_top_k={self.query_top_k}"
