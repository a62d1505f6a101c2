"""Resumable training checkpoints: one directory per save, written atomically.

Layout of ``<dir>/``::

    model.safetensors    model state (tied weights stored once; safetensors.torch.save_model)
    optimizer.pt         optimizer.state_dict()
    scheduler.pt         lr scheduler state (when given)
    scaler.pt            GradScaler state (when given)
    rng.pt               python, numpy, torch CPU and CUDA generator states
    trainer_state.json   step, epoch, data position, tokens seen, metrics history, callback states
    config.json          the run config

Everything is written to a temporary sibling directory whose files and directory are fsynced, which then
replaces ``<dir>`` with ``os.replace`` (the parent directory fsynced too), so after a crash or power cut a
checkpoint directory is either complete or absent (an interrupted save leaves only a ``.tmp-*`` sibling, which
the next save removes).

Every ``.pt`` file is loaded with ``torch.load(weights_only=True)``: a crafted pickle cannot run code, it is
refused (`UnsafeCheckpointError`). The RNG states are therefore saved as tensors and plain numbers (numpy's
state as an int64 tensor); ``rng.pt`` files of older versions (numpy arrays) still load, through torch's
allow-list of numpy's array types only.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from rxt.atomic_io import fsync_directory, fsync_tree

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
CHECKPOINT_PREFIX = "step-"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoint directories ``step-*`` under ``directory``, oldest first."""
    root = Path(directory)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds objects that a weights-only load refuses (possibly a crafted pickle)."""


def _numpy_globals() -> list[Any]:
    """numpy's array reconstruction, for ``rng.pt`` files written before RNG states were saved as tensors."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_pt(path: str | os.PathLike, map_location: Any = None) -> Any:
    """``torch.load(path, weights_only=True)``: tensors, numbers, strings and containers only, never code."""
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            f"refusing to load {str(path)!r}: it holds objects a weights-only load does not allow ({first}); "
            "only tensors, numbers, strings and containers are accepted"
        ) from None


def _numpy_state_to_tensors(state: tuple) -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_saved(saved: Any) -> tuple:
    if isinstance(saved, dict):
        keys = saved["keys"].numpy().astype(np.uint32)
        return saved["kind"], keys, saved["pos"], saved["has_gauss"], saved["cached_gaussian"]
    return saved  # an older checkpoint's tuple with a numpy array


def capture_rng_state() -> dict[str, Any]:
    """python, numpy, torch (and CUDA) generator states as tensors and plain numbers (weights-only loadable)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_tensors(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states from `capture_rng_state` (or the first of ``{"ranks": [...]}``, as `Trainer` saves)."""
    if "ranks" in state:
        state = state["ranks"][0]
    random.setstate(state["python"])
    np.random.set_state(_numpy_state_from_saved(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # a different GPU count: restore what fits
            for i, s in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    trainer_state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    rng_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (replacing an existing one); returns its path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_model(model, str(tmp / MODEL_FILE))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / SCALER_FILE)
        torch.save(rng_state if rng_state is not None else capture_rng_state(), tmp / RNG_FILE)
        _write_json(tmp / CONFIG_FILE, config or {})
        _write_json(tmp / STATE_FILE, trainer_state or {})  # written last: marks the directory complete
        fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_directory(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(
    path: str | os.PathLike,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: Any | None = None,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Restore the given objects from a checkpoint directory; returns the trainer state dict (with ``config``)."""
    directory = Path(path)
    if not (directory / STATE_FILE).is_file():
        raise FileNotFoundError(f"{str(directory)!r} is not a complete checkpoint directory (no {STATE_FILE})")
    missing, unexpected = load_model(model, str(directory / MODEL_FILE), strict=False, device=str(map_location))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(directory)!r} does not match the model: missing keys {sorted(missing)}, "
                         f"unexpected keys {sorted(unexpected)}")
    if optimizer is not None:
        optimizer.load_state_dict(load_pt(directory / OPTIMIZER_FILE, map_location=map_location))
    if scheduler is not None and (directory / SCHEDULER_FILE).is_file():
        scheduler.load_state_dict(load_pt(directory / SCHEDULER_FILE))
    if scaler is not None and (directory / SCALER_FILE).is_file():
        scaler.load_state_dict(load_pt(directory / SCALER_FILE))
    if restore_rng:
        restore_rng_state(load_pt(directory / RNG_FILE))
    state = json.loads((directory / STATE_FILE).read_text())
    state["config"] = json.loads((directory / CONFIG_FILE).read_text())
    return state
