"""Mixture-of-experts feed-forward block with a softmax top-k router and sort-based dispatch.

Shapes: N tokens (all leading dims of the input flattened), D = ``cfg.dim``, Hd = ``cfg.hidden_dim``,
E = ``cfg.num_experts``, k = ``cfg.top_k``.

Routing, per token n:
    p_n = softmax(router(x_n))                       (E,)
    (w_n, e_n) = top-k of p_n                         (k,), (k,)
    w_n <- w_n / sum(w_n)                             (when cfg.renormalize_topk)
    y_n = sum_j w_nj * expert_{e_nj}(x_n)

Dispatch: the N*k (token, expert) assignments are sorted by expert id, so every expert reads one contiguous
slice of the gathered tokens and runs a single matmul per layer on it (a loop over E slices, never over tokens).
The outputs are put back in assignment order with the inverse permutation and summed over the k choices; no
scatter-add, so the result is deterministic on every device.

Load balancing (Switch Transformer): loss = E * sum_e f_e * P_e, where f_e is the fraction of the N*k
assignments that went to expert e and P_e is the mean router probability of e over all N tokens. It is 1 for a
perfectly uniform router and grows as routing collapses onto few experts. Only P carries gradient (f is a count).
The loss times ``cfg.balance_loss_weight`` is stored on ``self.aux_loss`` after every forward; collect it with
:func:`rxt.aux_loss.collect_aux_loss`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from rxt.ffn import DenseFFN, FFNConfig, GatedFFN, get_activation


class MoEFeedForward(nn.Module):
    """E experts of the dense path's kind (gated or not), weights stacked along a leading expert axis.

    Parameters (same (out, in) layout as ``nn.Linear``, so expert e's slice is a drop-in Linear weight):
        router.weight  (E, D)
        gate_weight    (E, Hd, D)   only when cfg.gated
        up_weight      (E, Hd, D)
        down_weight    (E, D, Hd)
        gate_bias, up_bias (E, Hd) and down_bias (E, D) when cfg.bias
    """

    aux_loss: torch.Tensor | None

    def __init__(self, cfg: FFNConfig) -> None:
        super().__init__()
        if cfg.num_experts < 1:
            raise ValueError(f"FFNConfig.num_experts={cfg.num_experts} must be >= 1 for MoEFeedForward")
        self.cfg = cfg
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.act = get_activation(cfg.activation)
        self.dropout = nn.Dropout(cfg.dropout)
        e, d, h = cfg.num_experts, cfg.dim, cfg.hidden_dim
        self.router = nn.Linear(d, e, bias=False)
        self.up_weight = nn.Parameter(torch.empty(e, h, d))
        self.down_weight = nn.Parameter(torch.empty(e, d, h))
        self.gate_weight = nn.Parameter(torch.empty(e, h, d)) if cfg.gated else None
        if cfg.bias:
            self.up_bias = nn.Parameter(torch.empty(e, h))
            self.down_bias = nn.Parameter(torch.empty(e, d))
            self.gate_bias = nn.Parameter(torch.empty(e, h)) if cfg.gated else None
        else:
            self.up_bias = self.down_bias = self.gate_bias = None
        self.aux_loss = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise every expert like a fresh ``nn.Linear``: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        d, h = self.cfg.dim, self.cfg.hidden_dim
        with torch.no_grad():
            for weight, bias, fan_in in (
                (self.up_weight, self.up_bias, d),
                (self.gate_weight, self.gate_bias, d),
                (self.down_weight, self.down_bias, h),
            ):
                bound = 1.0 / math.sqrt(fan_in)
                if weight is not None:
                    weight.uniform_(-bound, bound)
                if bias is not None:
                    bias.uniform_(-bound, bound)
        self.router.reset_parameters()

    @torch.no_grad()
    def load_expert_(self, expert: int, ffn: nn.Module) -> None:
        """Copy a dense FFN's weights into expert ``expert`` (upcycling a dense checkpoint).

        ``ffn`` must be a :class:`GatedFFN` when ``cfg.gated`` else a :class:`DenseFFN`, with the same dim,
        hidden_dim and bias setting.
        """
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert={expert} must be in [0, num_experts={self.num_experts})")
        want = GatedFFN if self.cfg.gated else DenseFFN
        if not isinstance(ffn, want):
            raise TypeError(f"expert weights must come from a {want.__name__}, got {type(ffn).__name__}")
        pairs = [(self.up_weight, self.up_bias, ffn.up), (self.down_weight, self.down_bias, ffn.down)]
        if self.gate_weight is not None:
            pairs.append((self.gate_weight, self.gate_bias, ffn.gate))
        for weight, bias, linear in pairs:
            if linear.weight.shape != weight.shape[1:]:
                raise ValueError(
                    f"expert weight shape {tuple(linear.weight.shape)} must be {tuple(weight.shape[1:])}"
                )
            if (bias is None) != (linear.bias is None):
                raise ValueError(
                    f"FFN bias={linear.bias is not None} must match FFNConfig.bias={self.cfg.bias}"
                )
            weight[expert].copy_(linear.weight)
            if bias is not None:
                bias[expert].copy_(linear.bias)

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Run expert ``e`` on its tokens x (n_e, D) -> (n_e, D)."""

        def bias(b: torch.Tensor | None) -> torch.Tensor | None:
            return None if b is None else b[e]

        up = F.linear(x, self.up_weight[e], bias(self.up_bias))
        if self.gate_weight is not None:
            hidden = self.act(F.linear(x, self.gate_weight[e], bias(self.gate_bias))) * up
        else:
            hidden = self.act(up)
        return F.linear(self.dropout(hidden), self.down_weight[e], bias(self.down_bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., D) -> (..., D). Sets ``self.aux_loss`` (0-dim tensor) to the weighted balancing loss."""
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, D)
        n, e, k = tokens.shape[0], self.num_experts, self.top_k
        if n == 0:
            self.aux_loss = self.router.weight.new_zeros(())
            return torch.zeros_like(x)

        # Router softmax in at least float32: bf16 probabilities are too coarse to rank near-ties or to average.
        logits = self.router(tokens)
        probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)  # (N, E)
        top_w, top_e = probs.topk(k, dim=-1)  # (N, k), (N, k)
        if self.cfg.renormalize_topk:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)

        # Assignment a = n*k + j is (token n, its j-th expert). Sort assignments by expert so each expert's
        # tokens are one contiguous slice; a stable sort keeps token order within a slice (reproducible).
        flat_e = top_e.reshape(-1)  # (N*k,)
        order = torch.argsort(flat_e, stable=True)  # (N*k,)
        counts = torch.bincount(flat_e, minlength=e)  # (E,)
        gathered = tokens[order // k]  # (N*k, D), grouped by expert

        # One host sync to get the slice sizes; then one fused matmul chain per non-empty expert.
        outputs = [
            self._expert(i, chunk)
            for i, chunk in enumerate(gathered.split(counts.tolist(), dim=0))
            if chunk.shape[0] > 0
        ]
        expert_out = torch.cat(outputs, dim=0)  # (N*k, D), sorted order

        # Undo the sort with the inverse permutation, weight each assignment, sum over its token's k choices.
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        per_assignment = expert_out[inverse] * top_w.reshape(-1, 1).to(expert_out.dtype)  # (N*k, D)
        out = per_assignment.view(n, k, -1).sum(dim=1)  # (N, D)

        # Switch-style balancing loss over the top-k assignments (f) and all tokens' probabilities (P).
        fraction = counts.to(probs.dtype) / (n * k)  # (E,) f_e, no gradient
        mean_prob = probs.mean(dim=0)  # (E,) P_e
        self.aux_loss = e * (fraction * mean_prob).sum() * self.cfg.balance_loss_weight
        return out.reshape(shape)

    def extra_repr(self) -> str:
        kind = "gated" if self.cfg.gated else "dense"
        return (
            f"num_experts={self.num_experts}, top_k={self.top_k}, dim={self.cfg.dim}, "
            f"hidden_dim={self.cfg.hidden_dim}, {kind}, activation={self.cfg.activation}"
        )
