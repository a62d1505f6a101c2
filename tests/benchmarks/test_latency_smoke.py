"""Smoke test of `benchmarks/latency.py` on CPU with the tiny preset: every arm runs, the fair comparison is
stated, and CPU timings are refused inside benchmarks/results/."""

from __future__ import annotations

import json

import pytest

ARGS = ["--device", "cpu", "--configs", "tiny", "--turns", "3", "--query-tokens", "4", "--answer-tokens", "3"]


def test_latency_smoke(tmp_path, load_script, single_torch_thread):
    bench = load_script("benchmarks/latency.py")
    out = tmp_path / "latency.json"
    assert bench.main([*ARGS, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    (entry,) = doc["configs"]
    assert entry["config"] == "tiny" and doc["dtype"] == "float32" and "latency.py" in doc["command"]
    for arm in bench.ARMS:
        rows = entry[arm]["turns"]
        assert [r["turn"] for r in rows] == [1, 2, 3], arm
        assert all(r["ttft_ms"] > 0 and r["per_token_ms"] > 0 and r["turn_ms"] > r["ttft_ms"] for r in rows), arm
    # The prefix-cached slot holds every token of the conversation but the last answer token (not fed yet).
    cached = entry["stateless_prefix_cached"]["turns"]
    assert [r["cached_tokens"] for r in cached] == [7 * t - 1 for t in (1, 2, 3)]
    assert [r["prompt_tokens"] for r in cached] == [4, 5, 5]
    no_cache = entry["stateless_no_cache"]["turns"]
    assert cached[-1]["memory_bytes"] < no_cache[-1]["memory_bytes"] and len({r["memory_bytes"] for r in cached}) == 3
    assert len({r["memory_bytes"] for r in entry["rxt"]["turns"]}) == 1  # the STM: constant
    ratios = entry["rxt_advantage_vs_prefix_cached"]
    assert set(ratios) == {"ttft_ratio", "per_token_ratio", "turn_ratio"} and all(v > 0 for v in ratios.values())
    assert ratios["ttft_ratio"] == pytest.approx(
        entry["stateless_prefix_cached"]["last_ttft_ms"] / entry["rxt"]["last_ttft_ms"])
    assert out.with_suffix(".png").stat().st_size > 0


def test_latency_append_keeps_other_configs(tmp_path, load_script, single_torch_thread):
    bench = load_script("benchmarks/latency.py")
    out = tmp_path / "latency.json"
    out.write_text(json.dumps({"configs": [{"config": "nano", "rxt": {}}, {"config": "tiny", "stale": True}]}))
    assert bench.main([*ARGS, "--arms", "rxt", "--append", "--out", str(out)]) == 0
    configs = json.loads(out.read_text())["configs"]
    assert [c["config"] for c in configs] == ["nano", "tiny"] and "stale" not in configs[1]
    assert "--append" in configs[1]["command"]


def test_latency_refuses_cpu_timings_in_results(capsys, load_script):
    bench = load_script("benchmarks/latency.py")
    with pytest.raises(SystemExit) as exc:
        bench.main([*ARGS, "--out", str(bench.RESULTS_DIR / "latency_cpu.json")])
    assert exc.value.code == 2 and "benchmarks/results" in capsys.readouterr().err
