"""`benchmarks/copy_gate_sweep.py`: every variant is a valid copy-gate config (a mistyped field or bad JSON would
only fail minutes into a GPU call), and a run's report keeps the shared base apart from each variant's changes."""

from __future__ import annotations

import json
from pathlib import Path

from training.copy_gate import CopyGateConfig, parse_overrides


def test_every_variant_builds_a_gate_config(load_script):
    sweep = load_script("benchmarks/copy_gate_sweep.py")
    for name in sweep.VARIANTS:
        cmd = sweep.command(name, "cuda", 12.0, Path("/tmp/x"))
        overrides = [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"]
        config = CopyGateConfig(**parse_overrides(overrides))
        assert (config.device, config.max_seconds) == ("cuda", 12.0), name
        assert cmd[-1] == f"/tmp/x/gate_{name}.json"


def test_report_has_base_and_variant_changes(tmp_path, load_script):
    sweep = load_script("benchmarks/copy_gate_sweep.py")
    out = tmp_path / "sweep.json"
    assert sweep.main(["--device", "cpu", "--seconds", "0.1", "--variants", "allgroups_1fact", "--work",
                       str(tmp_path / "work"), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["base"] == sweep.BASE
    (run,) = doc["runs"]
    assert run["variant"] == "allgroups_1fact" and run["overrides"] == sweep.VARIANTS["allgroups_1fact"]
    assert 0.0 <= run["recall"] <= 1.0 and run["steps"] >= 1
