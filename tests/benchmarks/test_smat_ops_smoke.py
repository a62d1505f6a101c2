"""Smoke test of `benchmarks/smat_ops.py` on CPU (tiny preset): the restructured SMAT step dispatches fewer ops than
the per-turn loop, the counts split forward/backward and views, and --append keeps earlier records."""

from __future__ import annotations

import json


def test_smat_ops_counts_and_appends(tmp_path, load_script):
    bench = load_script("benchmarks/smat_ops.py")
    path = tmp_path / "smat_ops.json"
    common = ["--preset", "tiny", "--dim", "32", "--shape", "2x5", "--turn-tokens", "8", "--iters", "1", "--append",
              str(path)]
    assert bench.main(common) == 0
    assert bench.main([*common, "--reference", "--note", "loop"]) == 0
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "smat_ops"
    new, loop = doc["records"]
    assert new["path"] == "restructured" and loop["path"] == "reference" and loop["note"] == "loop"
    for row in (new, loop):
        assert row["step_ops"] == row["forward_ops"] + row["backward_ops"]
        assert 0 < row["step_compute_ops"] < row["step_ops"] and row["cpu_step_s"] > 0
    assert new["step_compute_ops"] < loop["step_compute_ops"]


def test_smat_ops_trainer_step(tmp_path, load_script):
    """--trainer counts whole SMATTrainer steps: the objective is almost all of it, the rest (clipping, the fused
    optimizer, the metrics) is a few dozen ops, and nothing in the step would make a CUDA step wait."""
    bench = load_script("benchmarks/smat_ops.py")
    path = tmp_path / "ops.json"
    assert bench.main(["--preset", "tiny", "--dim", "32", "--shape", "2x5", "--turn-tokens", "8", "--iters", "2",
                       "--trainer", "--out", str(path)]) == 0
    row = json.loads(path.read_text())
    assert row["trainer_step_ops"] == row["objective_ops"] + row["outside_objective_ops"]
    assert 0 < row["outside_objective_compute_ops"] < 100 < row["objective_compute_ops"]
    assert row["outside_objective_by_op"]["aten::_fused_adamw_"] >= 1  # the fused optimizer
    assert row["sync_ops"] == {}


def test_sync_counter_sees_host_reads():
    """The sync detector flags what would make a CUDA step wait: a value read back, a data-dependent size."""
    import importlib.util
    from pathlib import Path

    import torch

    spec = importlib.util.spec_from_file_location("smat_ops_sync", Path("benchmarks/smat_ops.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    x = torch.arange(6.0)
    counter = module.StepOpCounter()
    with counter:
        (x * 2).sum()
        assert counter.syncs == {}
        int(x.sum())
        x[x > 2]
        (x > 2).nonzero()
    assert counter.syncs.get("aten::_local_scalar_dense") == 1
    assert counter.syncs.get("aten::nonzero") == 1 and counter.syncs.get("aten::index.Tensor") == 1


def test_smat_ops_traffic(tmp_path, load_script):
    """--traffic: bytes and FLOPs of a step by op and by code line, extrapolated to the batch, beside the anchor's;
    the roofline sums each op's bound, so it is at least the bytes' and the FLOPs' own time."""
    bench = load_script("benchmarks/smat_ops.py")
    path = tmp_path / "ops.json"
    assert bench.main(["--preset", "tiny", "--shape", "4x3", "--turn-tokens", "8", "--traffic", "--top", "5",
                       "--out", str(path)]) == 0
    row = json.loads(path.read_text())
    assert row["traffic_gb"] > 0 and row["tflop"] > 0 and len(row["by_op"]) == len(row["by_site"]) == 5
    floor = max(row["traffic_gb"] * 1e9 / bench.H200_BYTES, row["tflop"] * 1e12 / bench.H200_FLOPS) * 1e3
    assert row["roofline_ms"] >= floor * (1 - 1e-9)
    full = bench.measure_traffic("tiny", 4, 3, 8, 4, 1000)
    ops = {r["name"] for r in full["by_op"]}
    # RMSNorm counted as the GPU's one fused kernel each way, not the CPU's decomposition
    assert {"aten::_fused_rms_norm", "aten::_fused_rms_norm_backward"} <= ops and "aten::rsqrt" not in ops
    assert any(r["name"].startswith("backward of ") for r in full["by_site"])  # backward ops find their line
    assert row["anchor"]["tokens"] == 512 * 256 and row["per_token_vs_anchor"]["bytes"] > 0
