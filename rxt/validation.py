"""Input checks at the public entry points, so bad input fails with a message naming the value and the limit
instead of a device-side assert deep inside torch."""

from __future__ import annotations

import torch


def check_token_ids(input_ids: torch.Tensor, vocab_size: int, max_seq_len: int, *, name: str = "input_ids") -> None:
    if torch.compiler.is_compiling():
        return  # the id range check reads values back to the host: it would break the compiled graph
    if input_ids.dim() != 2:
        raise ValueError(f"{name} must be (batch, tokens); got shape {tuple(input_ids.shape)}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must hold integer token ids; got dtype {input_ids.dtype}")
    if input_ids.shape[1] > max_seq_len:
        raise ValueError(f"{name} has {input_ids.shape[1]} tokens, more than max_seq_len={max_seq_len}")
    if input_ids.numel():
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} contains token id {bad}, outside 0..{vocab_size - 1} (vocab_size={vocab_size})")


def check_attention_mask(mask: torch.Tensor | None, input_ids: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise ValueError(
            f"attention_mask shape {tuple(mask.shape)} must equal input_ids shape {tuple(input_ids.shape)}"
        )
    return mask.bool()
