"""What every training loop shares, whatever its step: the device choice, TensorBoard scalars, atomic metric
files, loss/reward curve plots and the staged-unfreezing schedule. `Trainer` (stages 1-4, baseline) and
`MRLTrainer` (stage 5) both use these, so a behaviour is written once."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rxt.atomic_io import atomic_write_bytes, atomic_write_json
from rxt.freezing import set_trainable


def resolve_device(name: str) -> torch.device:
    """``"cuda"``, ``"cpu"`` or ``"auto"`` (CUDA when available) as a device; asking for CUDA without it fails."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("TrainConfig.device='cuda' but CUDA is not available")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


class ScalarLog:
    """TensorBoard scalars under ``directory``, opened on first use; a no-op (one warning) without tensorboard
    or when ``enabled`` is False (non-main ranks)."""

    def __init__(self, directory: str | os.PathLike, enabled: bool = True) -> None:
        self.directory = Path(directory)
        self.enabled = enabled
        self._writer: Any = None

    def writer(self):
        if not self.enabled:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in the `train` extra
                warnings.warn("tensorboard is not installed; no TensorBoard logs", stacklevel=3)
                self._writer = False
            else:
                self._writer = SummaryWriter(str(self.directory))
        return self._writer or None

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        w = self.writer()
        if w is not None:
            for key, value in values.items():
                w.add_scalar(f"{prefix}/{key}", value, step)

    def flush(self) -> None:
        if self._writer:
            self._writer.flush()

    def close(self) -> None:
        if self._writer:
            self._writer.close()
        self._writer = None


def write_metrics(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """``metrics.json`` (or any JSON record), atomically."""
    return atomic_write_json(path, data)


def plot_curves(path: str | os.PathLike, series: Sequence[tuple[str, Sequence[float], Sequence[float], str]], *,
                xlabel: str, ylabel: str, title: str = "") -> Path | None:
    """A PNG of ``(label, xs, ys, matplotlib style)`` curves, written atomically; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(f"matplotlib is not installed; no {Path(path).name}", stacklevel=2)
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    drawn = False
    for label, xs, ys, style in series:
        if len(xs):
            ax.plot(list(xs), list(ys), style, label=label)
            drawn = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def groups_at(schedule: Sequence[tuple[int, Sequence[str]]], t: int) -> list[str]:
    """The groups of the last schedule entry whose start is <= ``t``."""
    current: list[str] = []
    for start, groups in schedule:
        if start <= t:
            current = list(groups)
    return current


class UnfreezeSchedule:
    """Staged unfreezing: ``schedule = [(start, [group, ...]), ...]`` over named parameter groups (e.g.
    `RxT.parameter_groups`: "memory", "rest"). Before unit ``t`` (an optimizer step in SMAT, an epoch in MRL)
    exactly the groups of the last entry with ``start <= t`` are trainable. Only ``requires_grad`` flips: the
    optimizer holds every parameter from the start and AdamW skips those without a gradient (no weight decay)."""

    def __init__(self, schedule: Sequence[tuple[int, Sequence[str]]], groups: dict[str, list[nn.Parameter]],
                 where: str = "unfreeze_schedule") -> None:
        unknown = sorted({g for _, gs in schedule for g in gs} - set(groups))
        if unknown:
            from training.config import ConfigError

            raise ConfigError(f"{where} names unknown group(s) {unknown}; known: {sorted(groups)}")
        self.schedule = [(int(s), list(g)) for s, g in schedule]
        self.groups = groups
        self.current: list[str] | None = None

    def apply(self, t: int) -> list[str]:
        """Make exactly the scheduled groups trainable before unit ``t``; returns them."""
        wanted = groups_at(self.schedule, t)
        if wanted != self.current:
            for name, params in self.groups.items():
                set_trainable(params, name in wanted)
            self.current = wanted
        return wanted


__all__ = ["ScalarLog", "UnfreezeSchedule", "groups_at", "plot_curves", "resolve_device", "write_metrics"]
