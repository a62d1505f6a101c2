"""Smoke tests of `benchmarks/train_throughput.py` and `benchmarks/ddp_joint.py` on CPU (tiny preset): every
stage builds and steps through its own trainer, records carry the fields the README table reads, CPU timings are
kept out of benchmarks/results/, and the DDP merge computes the scaling and the loss-curve difference."""

from __future__ import annotations

import json

import pytest


def test_every_stage_steps_and_records(tmp_path, load_script):
    bench = load_script("benchmarks/train_throughput.py")
    out = tmp_path / "tt.json"
    argv = ["--preset", "tiny", "--rows", "4", "--row-len", "64", "--smat", "2x3", "--turn-tokens", "16", "--mrl",
            "2x2", "--documents", "80", "--warmup", "0", "--iters", "1", "--iters-before", "1", "--num-workers", "0",
            "--device", "cpu", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = json.loads(out.read_text())
    rows = {r["stage"]: r for r in doc["stages"]}
    assert set(rows) == set(bench.STAGES)
    for name, r in rows.items():
        assert "error" not in r, (name, r.get("error"))
        assert r["step_ms"] > 0 and r["real_tokens_per_s"] > 0 and r["vs_anchor"] > 0, name
    assert rows["anchor"]["vs_anchor"] == 1.0
    assert rows["joint"]["packed"] and not rows["joint-before"]["packed"]
    assert rows["joint"]["pack_fill"] > 0.8  # packed rows are mostly real tokens
    assert rows["smat"]["path"].startswith("restructured") and rows["smat-before"]["path"].startswith("per-turn loop")
    assert rows["smat"]["shape_buckets"] == [16] and rows["smat-eager"]["shape_buckets"] is None
    assert rows["smat-eager"]["path"] == "restructured, eager, no shape_buckets"
    # smat-recipe takes the nano recipe's last SMAT step's settings, and steps once on another shape first
    recipe = rows["smat-recipe"]
    assert recipe["settings"]["max_turns"] == 19 and recipe["other_shape_step_s"] > 0
    assert rows["mrl"]["collect_ms"] > 0 and rows["mrl"]["update_ms"] > 0  # where an IMPO update's time goes
    assert doc["device"] == "cpu" and "mfu" in doc
    for r in rows.values():  # the fields of the record (kernels and busy fraction: GPU only)
        assert {"stage", "real_tokens_per_s", "step_ms", "kernels_per_step", "gpu_busy_fraction", "vs_anchor"} <= set(r)


def test_smoke_mode_and_deadline(tmp_path, load_script):
    bench = load_script("benchmarks/train_throughput.py")
    out = tmp_path / "tt.json"
    assert bench.main(["--smoke", "--stages", "anchor", "sft", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["stages"]
    assert [r["stage"] for r in rows] == ["anchor", "sft"] and all("error" not in r for r in rows)
    assert rows[0]["iters"] == bench.SMOKE["iters"] and rows[1]["batch"] == "4 rows x 64"
    assert bench.main(["--smoke", "--stages", "anchor", "mrl", "--deadline-s", "1e-9", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["stages"]
    assert [(r["stage"], "skipped" in r) for r in rows] == [("anchor", True), ("mrl", True)]


def test_cpu_timings_stay_out_of_results(load_script, capsys):
    bench = load_script("benchmarks/train_throughput.py")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--stages", "anchor", "--out", "benchmarks/results/x.json"])
    assert "benchmarks/results" in capsys.readouterr().err


def test_ddp_merge(tmp_path, load_script, monkeypatch):
    bench = load_script("benchmarks/ddp_joint.py")
    base = {"device": "cpu", "versions": {}, "rows_per_step": 8, "compiled": False}
    (tmp_path / "1.json").write_text(json.dumps({**base, "world_size": 1, "real_tokens_per_s": 100.0,
                                                 "loss_curve": [3.0, 2.0]}))
    (tmp_path / "2.json").write_text(json.dumps({**base, "world_size": 2, "real_tokens_per_s": 190.0,
                                                 "loss_curve": [3.0, 2.01]}))
    monkeypatch.setattr("sys.argv", ["ddp_joint.py", "--merge", str(tmp_path / "1.json"), str(tmp_path / "2.json"),
                                     "--out", str(tmp_path / "ddp.json")])
    bench.main()
    doc = json.loads((tmp_path / "ddp.json").read_text())
    assert doc["scaling"] == pytest.approx(1.9) and doc["loss_max_abs_diff"] == pytest.approx(0.01)


def test_ddp_run_reads_losses_back_only_on_log_steps(tmp_path, load_script, monkeypatch):
    """One process on the CPU: the loss curve has every step, read back in one transfer per log step (every
    --log-every steps and after the last), not once per step."""
    from training.step_metrics import PendingMetrics

    bench = load_script("benchmarks/ddp_joint.py")
    reads: list[int] = []
    original = PendingMetrics.read_back

    def counted(self):
        reads.append(len(self))
        return original(self)

    monkeypatch.setattr(PendingMetrics, "read_back", counted)
    out = tmp_path / "ddp_1.json"
    monkeypatch.setattr("sys.argv", ["ddp_joint.py", "--device", "cpu", "--preset", "tiny", "--rows", "4",
                                     "--row-len", "64", "--steps", "5", "--warmup", "1", "--documents", "80",
                                     "--log-every", "2", "--out", str(out)])
    bench.main()
    row = json.loads(out.read_text())
    assert [n for n in reads if n] == [2, 2, 1]  # steps 1-2, 3-4, then the last
    assert len(row["loss_curve"]) == len(row["step_ms_all"]) == 5 and row["world_size"] == 1
    assert all(isinstance(v, float) and v > 0 for v in row["loss_curve"]) and row["step_ms"] > 0


def test_mrl_ops_counts_collection_and_update(tmp_path, load_script):
    bench = load_script("benchmarks/mrl_ops.py")
    out = tmp_path / "ops.json"
    assert bench.main(["--preset", "tiny", "--mrl", "2x2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["collect_ops"] > 100 and row["update_ops"] > 100 and row["action_tokens"] > 0
    assert row["collect_s"] > 0 and row["update_s"] > 0 and row["dim"] == 32


def test_mrl_ops_append_keeps_earlier_records(tmp_path, load_script):
    bench = load_script("benchmarks/mrl_ops.py")
    path = tmp_path / "mrl_ops.json"
    path.write_text(json.dumps({"collect_ops": 5, "commit": "abc"}))  # the earlier one-record format
    first = bench.with_record(path, {"collect_ops": 3})
    assert first == {"benchmark": "mrl_ops", "records": [{"collect_ops": 5, "commit": "abc"}, {"collect_ops": 3}]}
    path.write_text(json.dumps(first))
    assert [r["collect_ops"] for r in bench.with_record(path, {"collect_ops": 1})["records"]] == [5, 3, 1]
    assert bench.with_record(tmp_path / "new.json", {"x": 1})["records"] == [{"x": 1}]
    path.write_text(json.dumps({**first, "summary": {"before": 5}}))  # a file's other keys stay
    assert bench.with_record(path, {"collect_ops": 1})["summary"] == {"before": 5}


def test_included_rows_keep_where_they_were_measured(tmp_path, load_script):
    import argparse

    import torch

    bench = load_script("benchmarks/train_throughput.py")
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"command": "python earlier", "stages": [
        {"stage": "joint", "real_tokens_per_s": 50.0},
        {"stage": "smat-before", "real_tokens_per_s": 5.0, "measured_in": "check.json: python check"}]}))
    out = tmp_path / "tt.json"
    args = argparse.Namespace(include_from=earlier, include_stages=["joint", "smat-before"], out=out, preset="tiny")
    bench.write(args, torch.device("cpu"), [{"stage": "anchor", "real_tokens_per_s": 100.0}], "python now")
    rows = {r["stage"]: r for r in json.loads(out.read_text())["stages"]}
    assert rows["joint"]["measured_in"] == "earlier.json: python earlier" and rows["joint"]["vs_anchor"] == 0.5
    assert rows["smat-before"]["measured_in"] == "check.json: python check"


def test_smat_stage_top_kernels_and_no_epoch_end(tmp_path, load_script, monkeypatch):
    """--top-kernels adds the ranked ops to the profiled row (CPU: CPU self time), and the SMAT stage's dataset
    holds a global batch for every warm-up, timed and profiled step, so no measured step starts a new DataLoader."""
    bench = load_script("benchmarks/train_throughput.py")
    from training.stages.smat import SMATTrainer

    epochs = []
    loader = SMATTrainer._loader

    def counted_loader(self):
        epochs.append(self.steps_per_epoch)
        return loader(self)

    monkeypatch.setattr(SMATTrainer, "_loader", counted_loader)
    out = tmp_path / "tt.json"
    assert bench.main(["--smoke", "--stages", "smat", "--profile-steps", "1", "--top-kernels", "3",
                       "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["stages"]
    assert "error" not in row, row.get("error")
    assert len(row["top_kernels"]) == 3 and all(r["calls"] > 0 for r in row["top_kernels"])
    # one loader for every step: warm-up + timed + profiled steps + the spare batch
    assert epochs == [bench.SMOKE["warmup"] + bench.SMOKE["iters"] + 1 + 1]
    with pytest.raises(SystemExit):
        bench.main(["--smoke", "--stages", "smat", "--top-kernels", "-2", "--out", str(out)])


def test_smat_recipe_settings_and_overrides(tmp_path, load_script):
    bench = load_script("benchmarks/train_throughput.py")
    config = tmp_path / "smat.yaml"
    config.write_text("max_turns: 7\nbptt_depth: 7\nshape_buckets: [32, 64]\ndata: []\n")
    settings = bench.recipe_smat_settings(config, ['dynamic_compile="step"', "turn_buckets=[3, 7]"])
    assert settings == {"max_turns": 7, "shape_buckets": [32, 64], "dynamic_compile": "step", "turn_buckets": [3, 7]}
    for bad, names in (["bptt_depth=2"], "FIELD=JSON"), (["max_turns"], "FIELD=JSON"), (["max_turns=seven"], "JSON"):
        with pytest.raises(ValueError, match=names):
            bench.recipe_smat_settings(config, bad)
