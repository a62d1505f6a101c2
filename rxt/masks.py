"""Boolean attention masks (True = may attend), shaped to broadcast to (B, H, T_q, T_k).

Padding masks **keys**. A query row whose keys are all masked (a fully padded sequence) would make softmax
divide by zero and give NaN, so every builder lets such a row attend to all keys instead: its output is
meaningless but finite, and callers ignore padded positions.
"""

from __future__ import annotations

import torch


def _never_empty(mask: torch.Tensor) -> torch.Tensor:
    return mask | ~mask.any(dim=-1, keepdim=True)


def key_padding_mask(key_valid: torch.Tensor) -> torch.Tensor:
    """(B, T_k) validity -> (B, 1, 1, T_k) mask for bidirectional attention."""
    return _never_empty(key_valid.bool()[:, None, None, :])


def causal_mask(key_valid: torch.Tensor | None, length: int, device: torch.device) -> torch.Tensor:
    """Causal mask (1 or B, 1, T, T), combined with key padding when ``key_valid`` (B, T) is given."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()[None, None]
    if key_valid is None:
        return causal
    return _never_empty(causal & key_valid.bool()[:, None, None, :])


def cached_causal_mask(positions: torch.Tensor, key_count: int) -> torch.Tensor:
    """Mask (B, 1, T_q, key_count) for queries at ``positions`` (B, T_q) over a KV cache.

    Key j is visible to a query at position p iff j <= p. With right padding, every key at or before a real
    query's position is a real token of the same row, so no separate padding term is needed.
    """
    keys = torch.arange(key_count, device=positions.device)
    return (keys[None, None, :] <= positions[:, :, None]).unsqueeze(1)
