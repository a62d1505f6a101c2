"""Non-finite steps: skipped on the device, counted on the host, fatal after ``patience`` in a row.

A NaN or inf loss (or, outside fp16, gradient norm) means the step's gradients are garbage. Such a step never
touches the weights: the trainer hands the optimizer a ``found_inf`` flag computed on the device (`skip_flag`),
and the fused AdamW kernel skips the whole update, moments and step count included (`optimizer_step`), the way
`torch.amp.GradScaler` skips fp16 overflows, so no host sync is needed to decide it. The host learns about the
skipped steps when the trainer reads its metrics back (log steps, evaluation/checkpoint/stop boundaries, the end:
`training.step_metrics`); `NonFiniteLossGuard` then counts consecutive non-finite steps in step order and raises
`NonFiniteLossError` once more than ``patience`` arrive in a row (``TrainConfig.nonfinite_loss_patience``; 0 = at
the first). The read-back precedes every log, evaluation and checkpoint, so no checkpoint is written after the
bad step; the error may come up to ``log_every`` steps after the step it names, but the skipped steps in between
changed no weight.

Under fp16 a non-finite gradient norm alone is the GradScaler's business (an overflow: it skips the step and
lowers the scale, as usual), so the guard counts only non-finite losses there.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss was NaN or inf for more consecutive steps than the patience allows."""


class NonFiniteLossGuard:
    """``check(step, metrics)`` per step, in step order. ``watch_grad_norm``: a non-finite ``grad_norm`` counts
    as a non-finite step too (off under fp16, where overflows are expected)."""

    def __init__(self, patience: int = 0, watch_grad_norm: bool = True) -> None:
        if patience < 0:
            raise ValueError(f"patience={patience} must be >= 0")
        self.patience = patience
        self.watch_grad_norm = watch_grad_norm
        self.streak = 0

    def check(self, step: int, metrics: Mapping[str, Any]) -> None:
        loss = metrics.get("loss", 0.0)
        grad_norm = metrics.get("grad_norm", 0.0) if self.watch_grad_norm else 0.0
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.streak = 0
            return
        self.streak += 1
        if self.streak > self.patience:
            norm = f", grad norm {grad_norm}" if not math.isfinite(grad_norm) else ""
            raise NonFiniteLossError(
                f"loss is {loss} at step {step}{norm} ({self.streak} non-finite step(s) in a row, more than "
                f"nonfinite_loss_patience={self.patience}); training stopped before saving it (the non-finite "
                "steps were skipped: they changed no weight). Lower lr (or check the data and precision) and resume "
                "from the last checkpoint"
            )


def skip_flag(loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
    """0-dim float32 on the loss's device: 1.0 where the loss or the grad norm is non-finite, else 0.0 (the
    ``found_inf`` convention of the fused optimizers: they skip the update when it equals 1)."""
    bad = ~torch.isfinite(loss.detach()) | ~torch.isfinite(grad_norm.detach().to(loss.device))
    return bad.to(torch.float32)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` honours ``optimizer.found_inf`` (fused Adam/AdamW: every group fused)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and all(
        g.get("fused") for g in optimizer.param_groups)


_warned_unfused = False


def optimizer_step(optimizer: torch.optim.Optimizer, skip: torch.Tensor,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """``optimizer.step()`` unless ``skip`` (a `skip_flag`) is 1, decided on the device where possible.

    - fp16 (``scaler`` enabled, after ``scaler.unscale_``): ``skip`` is or-ed into the scaler's own ``found_inf``
      (so a NaN loss with finite gradients is skipped too, and lowers the scale), then ``scaler.step`` and
      ``scaler.update`` as usual; with a fused optimizer neither reads anything back.
    - a fused optimizer: ``skip`` is its ``found_inf`` for this call (the kernel skips the update, the step count
      is restored), so nothing is read back;
    - any other optimizer cannot skip on the device: ``skip`` is read back (a host sync per step; warned once).
    """
    global _warned_unfused
    if scaler is not None and scaler.is_enabled():
        # `_found_inf_per_device` holds the flags `unscale_` found; the scaler's step/update read them
        for found in scaler._found_inf_per_device(optimizer).values():
            torch.maximum(found, skip.to(found.device), out=found)
        scaler.step(optimizer)
        scaler.update()
        return
    if is_fused(optimizer):
        optimizer.found_inf = skip
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
        return
    if not _warned_unfused:
        _warned_unfused = True
        warnings.warn(f"{type(optimizer).__name__} is not fused: skipping a non-finite step reads a flag back "
                      "every step (a host sync)", stacklevel=2)
    if not bool(skip):
        optimizer.step()


__all__ = ["NonFiniteLossError", "NonFiniteLossGuard", "is_fused", "optimizer_step", "skip_flag"]
