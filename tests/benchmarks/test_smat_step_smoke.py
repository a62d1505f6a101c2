"""Smoke test of `benchmarks/smat_step.py` on CPU with the tiny preset: it times a real SMAT step and refuses to
write CPU timings into benchmarks/results/."""

from __future__ import annotations

import json

import pytest


def test_smat_step_smoke(tmp_path, load_script):
    bench = load_script("benchmarks/smat_step.py")
    out = tmp_path / "smat_step.json"
    assert bench.main(["--preset", "tiny", "--shapes", "2x3", "--turn-tokens", "8", "--warmup", "0", "--iters", "1",
                       "--device", "cpu", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (row,) = doc["results"]
    assert (row["batch"], row["turns"], row["turn_tokens"]) == (2, 3, 8)
    assert row["step_ms"] > 0 and row["tokens_per_s"] > 0
    assert doc["device"] == "cpu" and "smat_step.py" in doc["command"]
    assert "top_kernels" not in row  # only when asked


def test_smat_step_top_kernels_on_cpu(tmp_path, load_script, capsys):
    """--top-kernels N records the N ops with the most time per step (on the CPU: CPU self time), most first."""
    bench = load_script("benchmarks/smat_step.py")
    out = tmp_path / "smat_step.json"
    assert bench.main(["--preset", "tiny", "--shapes", "2x3", "--turn-tokens", "8", "--warmup", "0", "--iters", "1",
                       "--profile-steps", "2", "--top-kernels", "4", "--trainer-attention", "--device", "cpu",
                       "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    top = row["top_kernels"]
    assert len(top) == 4 and row["attention"].startswith("trainer")
    assert all(set(r) == {"name", "calls", "total_ms"} and r["calls"] > 0 and r["total_ms"] >= 0 for r in top)
    assert [r["total_ms"] for r in top] == sorted((r["total_ms"] for r in top), reverse=True)
    assert "top 4 by total time" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--shapes", "2"], ["--shapes", "0x3"], ["--device", "cpu"],
                                  ["--top-kernels", "-1", "--out", "/tmp/x.json"]])
def test_smat_step_bad_arguments(capsys, argv, load_script):
    bench = load_script("benchmarks/smat_step.py")
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert {"--shapes": "--shapes", "--device": "benchmarks/results", "--top-kernels": "--top-kernels -1"}[argv[0]] in err
