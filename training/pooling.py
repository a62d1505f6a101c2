"""Pool encoded interactions to the STM slot count (the self-supervised memory target of stage 3).

``pool_to_slots(encoded, key_valid, S)`` maps every layer's encoded tokens ED (L, B, T, D) to S vectors per row
by masked *adaptive average pooling* over the row's real tokens only. With ``n`` real tokens (taken in order;
padding is skipped wherever it sits), slot ``s`` is the mean of the real tokens of rank ``r`` in::

    [floor(s * n / S), ceil((s + 1) * n / S))

the bins of ``torch.nn.functional.adaptive_avg_pool1d``. Every bin holds at least one token for any
``n >= 1`` and ``S >= 1``:

- ``S < n``: neighbouring tokens are averaged (bins may overlap by one token);
- ``S == n``: slot s is real token s;
- ``S > n``: tokens are repeated (slot s takes token ``floor(s * n / S)``, or the mean of two neighbours where a
  bin straddles them), so every slot gets content spread over the whole interaction.

Slots are never tied to token positions of the padded tensor ("slot j = token j" of the reference bug): the
result depends only on the real tokens, so padding never changes it. A row with no real token pools to zeros
(callers mask such rows; the memory attention keeps their STM).
"""

from __future__ import annotations

import torch


def slot_bins(lengths: torch.Tensor, num_slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer bin bounds ``(lo, hi)``, each (B, S), over ranks of real tokens for rows of ``lengths`` (B,)."""
    s = torch.arange(num_slots, device=lengths.device)[None, :]
    n = lengths.long()[:, None]
    lo = torch.div(s * n, num_slots, rounding_mode="floor")
    hi = torch.div((s + 1) * n + num_slots - 1, num_slots, rounding_mode="floor")
    return lo, hi


def pooling_weights(key_valid: torch.Tensor, num_slots: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Averaging weights (B, S, T): row b, slot s puts ``1 / |bin|`` on each real token of its bin."""
    if key_valid.dim() != 2:
        raise ValueError(f"key_valid must be (B, T), got shape {tuple(key_valid.shape)}")
    valid = key_valid.bool()
    rank = torch.cumsum(valid.long(), dim=1) - 1  # rank of each real token among its row's real tokens
    lo, hi = slot_bins(valid.sum(dim=1), num_slots)
    r = rank[:, None, :]
    member = valid[:, None, :] & (r >= lo[:, :, None]) & (r < hi[:, :, None])  # (B, S, T)
    weights = member.to(dtype)
    return weights / weights.sum(dim=-1, keepdim=True).clamp_min(1.0)


def pool_to_slots(encoded: torch.Tensor, key_valid: torch.Tensor | None, num_slots: int) -> torch.Tensor:
    """Masked adaptive average pooling of ED (L, B, T, D) to (L, B, S, D); see the module docstring.

    ``key_valid`` (B, T) bool, True for real tokens (None: every token is real).
    """
    if encoded.dim() != 4:
        raise ValueError(f"encoded must be (L, B, T, D), got shape {tuple(encoded.shape)}")
    if isinstance(num_slots, bool) or not isinstance(num_slots, int) or num_slots < 1:
        raise ValueError(f"num_slots must be an int >= 1, got {num_slots!r}")
    _, batch, tokens, _ = encoded.shape
    if key_valid is None:
        key_valid = torch.ones(batch, tokens, dtype=torch.bool, device=encoded.device)
    if tuple(key_valid.shape) != (batch, tokens):
        raise ValueError(f"key_valid must be (B, T) = {(batch, tokens)}, got {tuple(key_valid.shape)}")
    weights = pooling_weights(key_valid.to(encoded.device), num_slots, dtype=encoded.dtype)
    # Padded positions have weight exactly 0; zero them in ED too so a NaN/inf pad never leaks through 0 * x.
    clean = encoded.masked_fill(~key_valid.to(encoded.device).bool()[None, :, :, None], 0.0)
    return torch.einsum("bst,lbtd->lbsd", weights, clean)


__all__ = ["pool_to_slots", "pooling_weights", "slot_bins"]
