"""The issue-14 target check on hand-made serving levels: each target's value, limit and verdict."""

from __future__ import annotations

import json

import pytest


def _level(clients, aggregate, engine, p99, update):
    return {"clients": clients, "aggregate_tokens_per_s": aggregate, "engine_tokens_per_s": engine,
            "client_tokens_per_s_median": aggregate * 1.1,
            "ttft_ms_p50": p99 / 2, "ttft_ms_p99": p99, "memory_update_ms_median": update}


RUN = {"preset": "nano", "device": "H200", "runtime_version": "commit abc: text",
       "levels": [_level(1, 1000, 1200, 4, 2.0), _level(32, 17000, 40000, 20, 4.0), _level(64, 30000, 74000, 30, 6.5)]}


def test_serving_targets_values_and_verdicts(load_script):
    targets = load_script("benchmarks/issue14_targets.py").serving_targets(RUN)
    expected = {
        "aggregate_64_over_engine": (30000 / 74000, False),
        "ttft_p99_ms_64": (30, False),
        "aggregate_32_over_1": (17.0, True),
        "memory_update_64_over_1": (3.25, False),
        "one_session_over_engine": (1000 / 1200, True),
    }
    assert set(targets) == set(expected)
    for name, (value, met) in expected.items():
        assert targets[name]["value"] == pytest.approx(value) and targets[name]["met"] is met, name


def test_targets_left_out_without_their_levels(load_script):
    run = dict(RUN, levels=[RUN["levels"][0]])
    assert set(load_script("benchmarks/issue14_targets.py").serving_targets(run)) == {"one_session_over_engine"}


def test_report_reads_the_last_runs(tmp_path, load_script):
    path = tmp_path / "serving.json"
    path.write_text(json.dumps({"runs": [dict(RUN, preset="old"), RUN]}))
    lines = load_script("benchmarks/issue14_targets.py").report(path, 1, None)
    assert lines[0].startswith("serving nano (H200, commit abc)") and "MISS ttft_p99_ms_64: 30" in "\n".join(lines)
    assert "  info one session while answering / engine: 0.917" in lines
