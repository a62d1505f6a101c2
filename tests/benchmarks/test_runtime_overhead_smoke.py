"""Smoke test of `benchmarks/runtime_overhead.py` on CPU with the tiny preset: the runtime over websockets (clients in
another process) and the bare engine at each session count, the per-part breakdown, and CPU timings refused inside
benchmarks/results/."""

from __future__ import annotations

import json
import sys

import pytest

ARGS = ["--device", "cpu", "--preset", "tiny", "--sessions", "1", "2", "--clients-per-process", "2", "--turns", "1",
        "--max-new-tokens", "3", "--breakdown"]


def test_runtime_overhead_smoke(tmp_path, load_script, single_torch_thread):
    bench = load_script("benchmarks/runtime_overhead.py")
    out = tmp_path / "overhead.json"
    assert bench.main([*ARGS, "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["preset"] == "tiny" and "runtime_overhead.py" in run["command"]
    assert [lv["sessions"] for lv in run["levels"]] == [1, 2]
    for level in run["levels"]:
        assert level["tokens"] > 0 and level["lane_steps"] > 0
        assert level["us_per_token"] == pytest.approx(level["wall_s"] * 1e6 / level["tokens"])
        assert level["engine_us_per_step"] > 0
        assert level["overhead_us_per_step"] == pytest.approx(level["us_per_step"] - level["engine_us_per_step"])
        parts = level["breakdown_us_per_step"]
        # Frames go out in the drain's fan-out, one write per connection (the send loop only while a transport is
        # behind, which these local clients never are).
        assert parts["lane: step (all)"] > 0 and parts["loop: frames encode + one direct write (in fan-out)"] > 0
        assert parts["loop: frame encode"] > 0
        assert parts["lane: step (all)"] >= parts["lane: executor.launch"]


def test_runtime_overhead_refuses_cpu_timings_in_results(load_script):
    bench = load_script("benchmarks/runtime_overhead.py")
    with pytest.raises(SystemExit):
        bench.main(["--device", "cpu", "--out", str(bench.RESULTS_DIR / "runtime_overhead.json")])


def test_runtime_overhead_counts_torch_calls_and_update_passes(tmp_path, load_script, single_torch_thread):
    bench = load_script("benchmarks/runtime_overhead.py")
    out = tmp_path / "calls.json"
    args = ["--device", "cpu", "--preset", "tiny", "--sessions", "2", "--clients-per-process", "2", "--turns", "2",
            "--max-new-tokens", "3", "--count-torch-calls", "--breakdown", "--switch-interval-s", "0.0001"]
    interval = sys.getswitchinterval()
    try:
        assert bench.main([*args, "--out", str(out)]) == 0
    finally:
        sys.setswitchinterval(interval)  # process-wide: leave the other tests Python's
    (run,) = json.loads(out.read_text())["runs"]
    (level,) = run["levels"]
    assert run["gil_switch_interval_s"] <= 0.0001
    assert 0 < level["lane_torch_calls_per_step"] < 50  # a fixed handful a step, none per row
    assert level["update_passes"] >= 1 and level["graph_captures"] == 0  # the CPU captures nothing
    assert 0 < level["lane_host_us_per_step"] < level["breakdown_us_per_step"]["lane: step (all)"]


def test_runtime_overhead_leaves_the_model_unwrapped(tmp_path, load_script, single_torch_thread):
    """Both instruments (--breakdown's timers, --count-torch-calls' counter) wrap the model's forwards; the run
    puts back the very functions it found (a wrapper left behind slowed and confused every later compile)."""
    bench = load_script("benchmarks/runtime_overhead.py")
    found = {(owner, name): owner.__dict__[name] for owner, name in bench.REPLAYED}
    interval = sys.getswitchinterval()
    try:
        assert bench.main(["--device", "cpu", "--preset", "tiny", "--sessions", "1", "--clients-per-process", "1",
                           "--turns", "1", "--max-new-tokens", "2", "--count-torch-calls", "--breakdown",
                           "--out", str(tmp_path / "o.json")]) == 0
    finally:
        sys.setswitchinterval(interval)
    assert all(owner.__dict__[name] is original for (owner, name), original in found.items())


def test_runtime_overhead_turn_timeline(tmp_path, load_script, single_torch_thread):
    """--turn-timeline: every phase of a turn stamped, each a non-negative median over the level's turns, and the
    server's TTFT and update no shorter than any of their parts; the wrapped methods are put back."""
    from rxnn_runtime.server import websocket

    bench = load_script("benchmarks/runtime_overhead.py")
    sink = websocket.Connection.__dict__["_on_events"]
    out = tmp_path / "timeline.json"
    assert bench.main(["--device", "cpu", "--preset", "tiny", "--sessions", "2", "--clients-per-process", "2",
                       "--turns", "2", "--max-new-tokens", "3", "--turn-timeline", "--out", str(out)]) == 0
    (level,) = json.loads(out.read_text())["runs"][0]["levels"]
    phases = level["turn_timeline_ms"]
    assert len(phases) == 10 and all(p["turns"] == 4 and p["median_ms"] >= 0 for p in phases.values())
    ttft = phases["server TTFT (submitted -> first token at its connection)"]["median_ms"]
    assert ttft >= phases["admitted -> first token on the lane"]["median_ms"]
    update = phases["server update (answer end -> committed)"]["median_ms"]
    assert update >= phases["device done -> committed on the lane"]["median_ms"]
    assert websocket.Connection.__dict__["_on_events"] is sink
