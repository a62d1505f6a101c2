"""Token-level losses and metrics with the label convention of :mod:`training.data.datasets`.

``labels`` are aligned with the inputs (not pre-shifted) and hold -100 wherever nothing is to be learned: pads
always, and, for interaction data (`InteractionDataset`), everything outside the answer. So the *answer-token*
metrics of issue 4 are simply these functions applied to interaction labels: query, marker and pad positions
never contribute, whatever the logits there are.

- autoregressive (decoder): the logits at position t predict ``labels[t + 1]``; the shift happens here
  (`causal_lm_loss`, ``token_accuracy(..., shifted=True)``);
- masked LM (encoder): the logits at position t predict ``labels[t]`` (`masked_lm_loss`,
  ``token_accuracy(..., shifted=False)``).

Losses are means over the counted target tokens. A batch with no target at all gives a loss of exactly 0 that
still depends on the logits (so ``backward`` works and DDP sees every parameter), and an accuracy of 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def upcast(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: half precision goes to float32, float32/float64 stay as they are."""
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


def _aligned(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits must be (B, T, V) and labels (B, T) with the same B, T; got {tuple(logits.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if shifted:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def _mean_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # sum / count on the device (no read-back of the count): 0, still connected to the logits, with no target
    flat_logits = upcast(logits.reshape(-1, logits.shape[-1]))
    flat_targets = targets.reshape(-1)
    total = F.cross_entropy(flat_logits, flat_targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (flat_targets != IGNORE_INDEX).sum().clamp(min=1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: ``logits[:, t]`` (B, T, V) against ``labels[:, t + 1]`` (B, T); -100 ignored."""
    return _mean_ce(*_aligned(logits, labels, shifted=True))


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy at the positions where ``labels`` (B, T) is not -100 (no shift)."""
    return _mean_ce(*_aligned(logits, labels, shifted=False))


@torch.no_grad()
def token_counts(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> tuple[int, int]:
    """``(correct, counted)``: argmax hits and the number of target tokens (labels != -100)."""
    logits, targets = _aligned(logits, labels, shifted)
    counted = targets != IGNORE_INDEX
    hits = (logits.argmax(dim=-1) == targets) & counted
    return int(hits.sum()), int(counted.sum())


@torch.no_grad()
def accuracy_tensor(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> torch.Tensor:
    """`token_accuracy` as a 0-dim device tensor (no host read-back; the Trainer reads a step's metrics once)."""
    logits, targets = _aligned(logits, labels, shifted)
    counted = targets != IGNORE_INDEX
    hits = (logits.argmax(dim=-1) == targets) & counted
    return hits.sum() / counted.sum().clamp(min=1)


@torch.no_grad()
def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> float:
    """Fraction of target tokens whose argmax prediction is right (0.0 when there is no target).

    ``shifted=True``: autoregressive (``logits[:, t]`` predicts ``labels[:, t + 1]``); ``False``: aligned (MLM).
    """
    correct, counted = token_counts(logits, labels, shifted)
    return correct / counted if counted else 0.0


def perplexity(loss: float | torch.Tensor) -> float:
    """``exp(loss)`` of a mean per-token cross-entropy (``inf`` when it overflows)."""
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


__all__ = [
    "IGNORE_INDEX",
    "accuracy_tensor",
    "causal_lm_loss",
    "masked_lm_loss",
    "perplexity",
    "token_accuracy",
    "token_counts",
    "upcast",
]
