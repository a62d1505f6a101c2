"""The plumbing `Trainer` and `MRLTrainer` share: one unfreeze schedule, the device choice, atomic metric files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from training.config import ConfigError
from training.plumbing import UnfreezeSchedule, groups_at, plot_curves, resolve_device, write_metrics


def test_unfreeze_schedule_flips_exactly_the_scheduled_groups():
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    schedule = UnfreezeSchedule([(0, ["a"]), (3, ["a", "b"])], {"a": list(a.parameters()), "b": list(b.parameters())})
    assert schedule.apply(0) == ["a"] and schedule.current == ["a"]
    assert all(p.requires_grad for p in a.parameters()) and not any(p.requires_grad for p in b.parameters())
    assert schedule.apply(2) == ["a"]
    assert schedule.apply(3) == ["a", "b"] and all(p.requires_grad for p in b.parameters())
    assert groups_at([(0, ["x"]), (5, ["y"])], 4) == ["x"]
    with pytest.raises(ConfigError, match=r"where.*unknown group\(s\) \['c'\]"):
        UnfreezeSchedule([(0, ["c"])], {"a": []}, "where")


def test_device_choice_and_atomic_files(tmp_path):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda'"):
            resolve_device("cuda")
    write_metrics(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}
    png = plot_curves(tmp_path / "c.png", [("loss", [0, 1], [2.0, 1.0], "-")], xlabel="step", ylabel="loss")
    if png is not None:
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == (["c.png", "m.json"] if png else ["m.json"])
