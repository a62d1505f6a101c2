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
