"""Smoke test of `benchmarks/loop_frames.py`: a scripted stand-in model, the real server, clients in another
process; every token reaches the clients and the loop's CPU time per step is reported."""

from __future__ import annotations

import json


def test_loop_frames_smoke(tmp_path, load_script):
    bench = load_script("benchmarks/loop_frames.py")
    out = tmp_path / "loop.json"
    assert bench.main(["--sessions", "1", "3", "--tokens", "4", "--step-ms", "1", "--repeats", "1",
                       "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert "loop_frames.py" in run["command"] and [lv["sessions"] for lv in run["levels"]] == [1, 3]
    for level in run["levels"]:
        assert level["steps"] == 4 and level["tokens"] == 4 * level["sessions"]  # the level checks every token
        assert level["loop_cpu_us_per_step_median"] > 0
