"""Stop training on a non-finite loss instead of finishing with NaN weights.

A NaN or inf loss means the step's gradients are garbage and the optimizer has (or is about to) write them into
the weights; every later step is wasted and the run would exit 0 with a broken model. `NonFiniteLossGuard`
counts consecutive non-finite losses and raises `NonFiniteLossError` once more than ``patience`` arrive in a
row (``TrainConfig.nonfinite_loss_patience``; 0 = at the first). No checkpoint is written after the bad step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss was NaN or inf for more consecutive steps than the patience allows."""


class NonFiniteLossGuard:
    def __init__(self, patience: int = 0) -> None:
        if patience < 0:
            raise ValueError(f"patience={patience} must be >= 0")
        self.patience = patience
        self.streak = 0

    def check(self, step: int, metrics: Mapping[str, float]) -> None:
        loss = metrics.get("loss", 0.0)
        if math.isfinite(loss):
            self.streak = 0
            return
        self.streak += 1
        if self.streak > self.patience:
            raise NonFiniteLossError(
                f"loss is {loss} at step {step} ({self.streak} non-finite step(s) in a row, more than "
                f"nonfinite_loss_patience={self.patience}); training stopped before saving it. Lower lr (or check "
                "the data and precision) and resume from the last checkpoint"
            )
