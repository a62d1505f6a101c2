"""Smoke test of `benchmarks/serving.py` on CPU with the tiny preset: the server's own memory-update time per turn
(``update_ms`` of memory_updated) reported beside the client's, and the interleaved poll-cap A/B."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def test_serving_reports_the_servers_update_time_and_the_ab(tmp_path, load_script, monkeypatch,
                                                            single_torch_thread):
    from rxnn_runtime import event_bridge

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))  # its sibling modules
    bench = load_script("benchmarks/serving.py")
    out = tmp_path / "serving.json"
    cap = event_bridge.POLL_MAX_S
    interval = sys.getswitchinterval()
    monkeypatch.setattr(sys, "argv", ["serving.py", "--device", "cpu", "--preset", "tiny", "--clients", "1", "2",
                                      "--clients-per-process", "2", "--turns", "2", "--max-new-tokens", "3",
                                      "--repeats", "1", "--ab-poll-max-ms", "1", "--ab-switch-interval-s", "0.0001",
                                      "--ab-levels", "2",
                                      "--out", str(out)])
    try:
        bench.main()
    finally:
        interval_after = sys.getswitchinterval()
        sys.setswitchinterval(interval)  # process-wide: the runtime lowered it at connect
    assert cap == event_bridge.POLL_MAX_S  # the A/B arm put the cap back
    (run,) = json.loads(out.read_text())["runs"]
    assert run["memory_update_ms_source"] == "server update_ms" and run["event_bridge_poll_max_s"] == cap
    one, two = run["levels"]
    for level in (one, two):
        # the server's time from the answer's end to the commit: the update pass at least, never nothing
        assert level["memory_update_ms_median"] > 0 and level["memory_update_client_ms_median"] >= 0
        assert level["memory_update_ms_p90"] >= level["memory_update_ms_median"]
    assert "ab_arms" not in one
    assert [arm["arm"] for arm in two["ab_arms"]] == ["poll_max_ms=1", "switch_interval_s=0.0001"]
    assert all(len(arm["repeats"]) == 1 and arm["aggregate_tokens_per_s"] > 0 for arm in two["ab_arms"])
    assert abs(interval_after - min(interval, 0.0002)) < 2e-6  # the runtime's own, back after the A/B arm


def test_serving_with_the_lane_in_a_child_process(tmp_path, load_script, monkeypatch, single_torch_thread):
    """``--engine-process``: the same levels, served by an `EngineProcess` that builds the same seeded model (its
    graphs, none on the CPU, counted through the pipe); the A/B arms that reach into the lane are refused."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2] / "benchmarks"))
    bench = load_script("benchmarks/serving.py")
    out = tmp_path / "serving.json"
    argv = ["serving.py", "--device", "cpu", "--preset", "tiny", "--clients", "1", "2", "--clients-per-process", "2",
            "--turns", "2", "--max-new-tokens", "3", "--repeats", "1", "--engine-process", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    interval = sys.getswitchinterval()
    try:
        bench.main()
    finally:
        sys.setswitchinterval(interval)
    (run,) = json.loads(out.read_text())["runs"]
    assert run["engine_process"] is True
    for level in run["levels"]:
        assert level["aggregate_tokens_per_s"] > 0 and level["memory_update_ms_median"] > 0
        assert level["graph_captures"] == 0
    monkeypatch.setattr(sys, "argv", [*argv, "--ab-update-priority"])
    with pytest.raises(SystemExit):
        bench.main()
