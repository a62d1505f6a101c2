"""Safe checkpoints and configs: weights-only loads (a crafted pickle runs no code), RNG states as tensors,
fsync on save, non-finite/absurd numbers refused, a non-finite loss stops training with an error."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_trainer import make, repetitive_data

from rxnn_runtime.cli import main
from training import checkpoint as ckpt
from training.checkpoint import (
    RNG_FILE,
    UnsafeCheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_pt,
    restore_rng_state,
    save_checkpoint,
)
from training.config import ConfigError, TrainConfig, load_config
from training.nonfinite import NonFiniteLossError, NonFiniteLossGuard

ROOT = Path(__file__).resolve().parents[2]
JOINT_YAML = ROOT / "examples" / "configs" / "tiny_joint.yaml"


class _RunsCode:
    """Unpickling this calls os.system: what a crafted rng.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "step-00000001", model=model, optimizer=opt, trainer_state={"step": 1})
    return path, model


@pytest.mark.parametrize("victim", [RNG_FILE, "optimizer.pt"])
def test_crafted_pickle_is_refused_and_runs_nothing(tmp_path, victim):
    path, model = _tiny_checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"python": _RunsCode(marker)}, path / victim)
    with pytest.raises(UnsafeCheckpointError, match=victim):
        load_checkpoint(path, model=model, optimizer=torch.optim.AdamW(model.parameters()))
    assert not marker.exists()


def test_trainer_resume_refuses_a_crafted_rng_file(tmp_path):
    trainer = make(tmp_path, repetitive_data(), max_steps=2, save_every=2)
    trainer.train()
    (latest,) = ckpt.list_checkpoints(trainer.checkpoint_dir)
    marker = tmp_path / "pwned"
    torch.save({"ranks": [_RunsCode(marker)]}, latest / RNG_FILE)
    fresh = make(tmp_path, repetitive_data(), max_steps=4)
    with pytest.raises(UnsafeCheckpointError):
        fresh.resume_from(trainer.checkpoint_dir)
    assert not marker.exists()


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    want = _draw()
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(load_pt(tmp_path / "rng.pt"))
    assert _draw() == want


def test_legacy_rng_file_with_numpy_arrays_still_loads(tmp_path):
    np.random.seed(5)
    legacy = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    want = _draw()
    torch.save(legacy, tmp_path / "rng.pt")
    restore_rng_state(load_pt(tmp_path / "rng.pt"))
    assert _draw() == want


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fsynced descriptors via /proc/self/fd")
def test_checkpoint_save_fsyncs_files_and_directories(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    _tiny_checkpoint(tmp_path)
    names = {Path(p).name for p in synced}
    for name in ("model.safetensors", "optimizer.pt", RNG_FILE, "trainer_state.json", "config.json"):
        assert name in names, (name, synced)
    assert str(tmp_path) in synced  # the parent directory, after the rename
    assert any(Path(p).name.startswith(".tmp-step-") for p in synced)  # the directory renamed into place


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("lr", ".inf", "finite"),
        ("lr", "1e30", r"TrainConfig.lr=1e\+30 must be <= 1.0"),
        ("weight_decay", ".nan", "finite"),
        ("weight_decay", "1e9", "weight_decay"),
        ("max_grad_norm", ".inf", "finite"),
        ("eps", "-.inf", "finite"),
    ],
)
def test_train_config_refuses_non_finite_and_absurd_numbers(tmp_path, field, value, needle):
    path = tmp_path / "c.yaml"
    path.write_text(f"{field}: {value}\n")
    with pytest.raises(ConfigError, match=needle) as info:
        load_config(path, TrainConfig)
    assert field in str(info.value)
    with pytest.raises(ConfigError, match=field):  # built directly, too
        TrainConfig(**{field: float(value.replace(".inf", "inf").replace(".nan", "nan"))})


def test_rxnn_train_with_infinite_lr_exits_non_zero_with_a_message(tmp_path, capsys):
    text = JOINT_YAML.read_text()
    assert "lr:" in text
    bad = tmp_path / "inf.yaml"
    bad.write_text("\n".join(line.split("lr:")[0] + "lr: .inf" if line.strip().startswith("lr:") else line
                             for line in text.splitlines()) + "\n")
    assert main(["train", "joint", "--config", str(bad), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "lr" in err and "finite" in err and err.count("\n") == 0
    assert not (tmp_path / "o").exists()


class _NaNAfter:
    """Wraps a trainer's compute_loss: from step ``start`` on, the loss is NaN for ``count`` steps."""

    def __init__(self, trainer, start: int, count: int, *, poison_grads: bool = True) -> None:
        self.trainer, self.start, self.count, self.poison = trainer, start, count, poison_grads
        self.inner = trainer.compute_loss

    def __call__(self, model, batch):
        out = self.inner(model, batch)
        if self.start <= self.trainer.step < self.start + self.count:
            # poisoned: NaN gradients too (a real divergence); else only the value is NaN (a spike the fp16
            # GradScaler would skip), which patience is for
            out.loss = out.loss * float("nan") if self.poison else out.loss + torch.tensor(float("nan"))
        return out


def test_non_finite_loss_stops_training_with_an_error(tmp_path):
    trainer = make(tmp_path, repetitive_data(), max_steps=10, save_every=2)
    trainer.compute_loss = _NaNAfter(trainer, start=4, count=100)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 5"):
        trainer.train()
    saved = [int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(trainer.checkpoint_dir)]
    assert saved == [2, 4]  # nothing saved after the bad step
    state = load_pt(ckpt.list_checkpoints(trainer.checkpoint_dir)[-1] / "optimizer.pt")
    assert state["state"]  # the last checkpoint is a clean one to resume from
    with torch.no_grad():
        model = make(tmp_path / "m", repetitive_data()).unwrapped_model
        ckpt.load_checkpoint(ckpt.list_checkpoints(trainer.checkpoint_dir)[-1], model=model)
        assert all(torch.isfinite(p).all() for p in model.parameters())


def test_patience_tolerates_a_short_streak(tmp_path):
    trainer = make(tmp_path, repetitive_data(), max_steps=8, nonfinite_loss_patience=2, max_grad_norm=1.0)
    trainer.compute_loss = _NaNAfter(trainer, start=3, count=2, poison_grads=False)
    trainer.train()  # two NaN steps in a row are within the patience
    assert trainer.step == 8


def test_guard_counts_consecutive_steps():
    guard = NonFiniteLossGuard(patience=1)
    guard.check(1, {"loss": float("inf")})
    guard.check(2, {"loss": 1.0})
    guard.check(3, {"loss": float("nan")})
    with pytest.raises(NonFiniteLossError, match="2 non-finite step"):
        guard.check(4, {"loss": float("nan")})
