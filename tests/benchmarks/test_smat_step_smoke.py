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


@pytest.mark.parametrize("argv", [["--shapes", "2"], ["--shapes", "0x3"], ["--device", "cpu"]])
def test_smat_step_bad_arguments(capsys, argv, load_script):
    bench = load_script("benchmarks/smat_step.py")
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert ("--shapes" in err) if argv[0] == "--shapes" else ("benchmarks/results" in err)
