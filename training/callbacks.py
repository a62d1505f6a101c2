"""A small callback interface for `Trainer` and the built-in callbacks.

Hooks (all optional): ``on_step(trainer, step, metrics)`` after every optimizer step with the rank-reduced
step metrics (``loss``, ``lr``, ``tokens``, ...), ``on_epoch(trainer, epoch)`` when an epoch of the data ends,
``on_eval(trainer, metrics)`` after an evaluation (``val_loss``, ...), ``on_save(trainer, path)`` after a
checkpoint is written (rank 0 only), ``on_end(trainer)`` when training ends. Callbacks stop training with
``trainer.request_stop(reason)``. ``on_step``/``on_epoch``/``on_eval`` run on every rank with identical inputs,
so stop decisions agree across ranks.

``metrics`` is a `training.step_metrics.StepMetrics`: the values known on the host (``lr``; ``tokens`` in a
single process) are there at once, the device ones (``loss``, ``grad_norm``, the stage's metrics) arrive with the
trainer's next read-back, at its log step. Reading one earlier reads back every pending step then: a host sync,
and under DDP a collective, so a callback must read on every rank alike (read first, then print on rank 0).
Callbacks that read device values only at log steps (`PrintMetrics` by default) cost no sync.

Stateful callbacks implement ``state_dict``/``load_state_dict``; the trainer stores them in checkpoints.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from training.checkpoint import list_checkpoints

if TYPE_CHECKING:
    from training.trainer import Trainer


class Callback:
    def on_step(self, trainer: Trainer, step: int, metrics: dict[str, float]) -> None:
        pass

    def on_epoch(self, trainer: Trainer, epoch: int) -> None:
        pass

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        pass

    def on_save(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PrintMetrics(Callback):
    """Prints step metrics every ``every`` steps and every evaluation (rank 0 only)."""

    def __init__(self, every: int | None = None, print_fn=print) -> None:
        self.every = every
        self.print_fn = print_fn

    @staticmethod
    def _fmt(metrics: dict[str, float]) -> str:
        return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())

    def on_step(self, trainer, step, metrics):
        every = self.every or trainer.cfg.log_every
        if step % every == 0:
            text = self._fmt(metrics)  # on every rank: off a log step this reads back, a collective under DDP
            if trainer.is_main:
                self.print_fn(f"step {step}: {text}")

    def on_eval(self, trainer, metrics):
        if trainer.is_main:
            self.print_fn(f"eval @ step {trainer.step}: {self._fmt(metrics)}")


class TokenCounter(Callback):
    """Counts training tokens (all ranks); with ``limit`` stops training once ``limit`` tokens have been seen.
    The count is known on the host in a single process; under DDP the global count is read back every step."""

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"TokenCounter.limit={limit} must be >= 1 or None")
        self.limit = limit
        self.tokens = 0

    def on_step(self, trainer, step, metrics):
        self.tokens += int(metrics.get("tokens", 0))
        if self.limit is not None and self.tokens >= self.limit:
            trainer.request_stop(f"token limit {self.limit} reached ({self.tokens} tokens)")

    def state_dict(self):
        return {"tokens": self.tokens}

    def load_state_dict(self, state):
        self.tokens = int(state.get("tokens", 0))


class CheckpointKeeper(Callback):
    """After each save, deletes all but the newest ``keep_last`` checkpoints next to the saved one."""

    def __init__(self, keep_last: int) -> None:
        if keep_last < 1:
            raise ValueError(f"CheckpointKeeper.keep_last={keep_last} must be >= 1")
        self.keep_last = keep_last

    def on_save(self, trainer, path):
        for old in list_checkpoints(Path(path).parent)[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)


class HubPush(Callback):
    """Pushes the model to the Hub repo ``repo_id`` at every save (rank 0): what the trained module's
    ``save_pretrained`` writes (config, weights and, for the stages, the tokenizer and heads) plus a generated model
    card with the run's ``metrics.json`` (`rxt.hub.push_folder`)."""

    def __init__(self, repo_id: str, private: bool = True) -> None:
        self.repo_id = repo_id
        self.private = private

    def on_save(self, trainer, path):
        import tempfile

        from rxt.hub import push_folder

        model = trainer.unwrapped_model
        if not hasattr(model, "save_pretrained"):
            raise TypeError(f"{type(model).__name__} has no save_pretrained (HubPush needs a saveable model)")
        with tempfile.TemporaryDirectory(prefix="rxnn-hub-push-") as tmp:
            folder = Path(tmp) / "model"
            model.save_pretrained(folder)
            # The card reads metrics.json from the run's output_dir (the parent of its final/).
            push_folder(folder, self.repo_id, source_dir=Path(trainer.output_dir) / "final", private=self.private,
                        commit_message=f"{trainer.cfg.run_name}: step {trainer.step}")


class EarlyStopping(Callback):
    """Stops training after ``patience`` evaluations without an improvement of ``metric`` by > ``min_delta``."""

    def __init__(self, patience: int, metric: str = "val_loss", mode: str = "min", min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"EarlyStopping.patience={patience} must be >= 1")
        if mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping.mode={mode!r} must be 'min' or 'max'")
        self.patience = patience
        self.metric = metric
        self.mode = mode
        self.min_delta = min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_evals = 0

    def on_eval(self, trainer, metrics):
        if self.metric not in metrics:
            raise KeyError(f"EarlyStopping watches {self.metric!r} but the evaluation reported {sorted(metrics)}")
        value = float(metrics[self.metric])
        better = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if better:
            self.best = value
            self.bad_evals = 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.patience:
            trainer.request_stop(f"early stopping: {self.metric} did not improve for {self.patience} evaluations "
                                 f"(best {self.best:.6g})")

    def state_dict(self):
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state):
        self.best = float(state.get("best", self.best))
        self.bad_evals = int(state.get("bad_evals", 0))
