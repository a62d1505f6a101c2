"""`TimeBudget`: fit a training run into a wall-clock budget (``TrainConfig.max_minutes``).

Stopping a run when the clock runs out would leave the learning rate wherever the cosine happened to be. Instead
the run's horizon is projected: once the warm-up is over (a few steps and a tenth of the budget: compilation,
allocator, data-loader start-up and library initialisation make the first steps slow), the mean time per step
since then gives how many steps fit in what is left, and ``max_steps`` (with the cosine's end and, in proportion,
its warmup) is moved there. The projection is repeated at every log step, so periodic evaluations and checkpoints
are paid for too; in the first half of the budget it may also move the end later again (never past the planned
``max_steps``), after that only sooner. A hard stop at the budget is the backstop, and a small reserve is kept
for the final evaluation and ``save_pretrained``.

The number of steps a budgeted run makes depends on the machine, so a budgeted run is not reproducible step for
step; leave ``max_minutes`` at 0 where that matters (the resume-equivalence tests do).
"""

from __future__ import annotations

import math
import time


class TimeBudget:
    """Projects how many optimizer steps fit in ``minutes`` of wall clock, counted from construction."""

    def __init__(self, minutes: float, start_step: int, *, warmup_steps: int = 3, warmup_fraction: float = 0.1,
                 probe_steps: int = 30, reserve: float = 0.05, clock=time.perf_counter) -> None:
        if not minutes > 0:
            raise ValueError(f"minutes={minutes} must be > 0")
        if not 0.0 <= reserve < 1.0:
            raise ValueError(f"reserve={reserve} must be in [0, 1)")
        self.seconds = minutes * 60.0
        self.reserve = reserve
        self.clock = clock
        self.started = clock()
        self.start_step = start_step
        self.warmup_steps = warmup_steps  # untimed steps ...
        self.warmup_fraction = warmup_fraction  # ... and untimed share of the budget
        self.probe_steps = probe_steps  # timed steps (or another `warmup_fraction`) before the first projection
        self._timed_from: tuple[int, float] | None = None  # (step, time) where timing began
        self._projected = False

    def elapsed(self) -> float:
        return self.clock() - self.started

    def expired(self) -> bool:
        return self.elapsed() >= self.seconds

    def may_lengthen(self) -> bool:
        """Whether a projection may still move the end later (the first half of the budget)."""
        return self.elapsed() < 0.5 * self.seconds

    def observe(self, step: int) -> bool:
        """Call after every optimizer step; returns True when a projection is due (the first one, once the
        warm-up and the probe are over; the trainer asks for later ones at its log steps)."""
        now = self.clock()
        if self._timed_from is None:
            if step - self.start_step >= self.warmup_steps and now - self.started >= self.warmup_fraction * self.seconds:
                self._timed_from = (step, now)
            return False
        if self._projected:
            return False
        first, t0 = self._timed_from
        if step - first >= self.probe_steps or now - t0 >= self.warmup_fraction * self.seconds:
            self._projected = True
            return True
        return False

    @property
    def projected(self) -> bool:
        return self._projected

    def seconds_per_step(self, step: int) -> float | None:
        if self._timed_from is None or step <= self._timed_from[0]:
            return None
        first, t0 = self._timed_from
        return (self.clock() - t0) / (step - first)

    def horizon(self, step: int, max_steps: int) -> int:
        """The last step that fits in the budget (minus the reserve), at most ``max_steps`` and at least
        ``step + 1``; ``max_steps`` while nothing has been timed."""
        per_step = self.seconds_per_step(step)
        if per_step is None or per_step <= 0:
            return max_steps
        left = self.seconds * (1.0 - self.reserve) - self.elapsed()
        fits = step + max(1, math.floor(left / per_step))
        return min(max_steps, fits)
