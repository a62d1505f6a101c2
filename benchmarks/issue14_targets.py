"""Issue 14's serving targets checked against `serving.py` runs, and the latency comparison's headline ratios.

Targets (one H200, the runtime against its own engine in the same run):
- at 64 sessions the runtime's aggregate tokens/s is at least 50% of the engine's;
- 32 sessions give at least 16x the aggregate of one session;
- TTFT p99 at 64 sessions is at most 25 ms;
- the median memory update at 64 sessions is at most 3x that of one session;
- one session runs at least 80% of the engine's single-stream rate.

    python benchmarks/issue14_targets.py --serving $OUT/serving.json --runs 2 --latency $OUT/latency.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def serving_targets(run: dict) -> dict:
    """Each target of a serving run as ``{name: {"value", "target", "met"}}``; targets whose session levels the
    run lacks are left out."""
    by_n = {level["clients"]: level for level in run["levels"]}
    out = {}

    def add(name: str, value: float, target: float, at_least: bool) -> None:
        out[name] = {"value": value, "target": target, "met": value >= target if at_least else value <= target}

    if 64 in by_n:
        add("aggregate_64_over_engine", by_n[64]["aggregate_tokens_per_s"] / by_n[64]["engine_tokens_per_s"], 0.5, True)
        add("ttft_p99_ms_64", by_n[64]["ttft_ms_p99"], 25.0, False)
    if 1 in by_n and 32 in by_n:
        add("aggregate_32_over_1", by_n[32]["aggregate_tokens_per_s"] / by_n[1]["aggregate_tokens_per_s"], 16.0, True)
    if 1 in by_n and 64 in by_n:
        add("memory_update_64_over_1", by_n[64]["memory_update_ms_median"] / by_n[1]["memory_update_ms_median"],
            3.0, False)
    if 1 in by_n:
        add("one_session_over_engine", by_n[1]["aggregate_tokens_per_s"] / by_n[1]["engine_tokens_per_s"], 0.8, True)
    return out


def report(serving: Path | None, runs: int, latency: Path | None) -> list[str]:
    lines = []
    if serving and serving.exists():
        for run in json.loads(serving.read_text())["runs"][-runs:]:
            lines.append(f"serving {run['preset']} ({run['device']}, {run['runtime_version'].split(':')[0]}):")
            for level in run["levels"]:
                lines.append(
                    f"  {level['clients']:>3} sessions: aggregate {level['aggregate_tokens_per_s']:9.1f} tok/s, "
                    f"engine {level.get('engine_tokens_per_s', float('nan')):9.1f}, TTFT p50/p99 "
                    f"{level['ttft_ms_p50']:.1f}/{level['ttft_ms_p99']:.1f} ms, memory update "
                    f"{level['memory_update_ms_median']:.2f} ms"
                    + (f" (server; client {level['memory_update_client_ms_median']:.2f} ms)"
                       if "memory_update_client_ms_median" in level else ""))
            for name, t in serving_targets(run).items():
                lines.append(f"  {'MET ' if t['met'] else 'MISS'} {name}: {t['value']:.3g} (target {t['target']:g})")
            one = next((level for level in run["levels"] if level["clients"] == 1), None)
            if one and "engine_tokens_per_s" in one:
                # The aggregate counts the wait for each memory update between turns; this is the rate while
                # answering (TTFT included), the same single stream the engine figure times.
                lines.append(f"  info one session while answering / engine: "
                             f"{one['client_tokens_per_s_median'] / one['engine_tokens_per_s']:.3g}")
    if latency and latency.exists():
        for entry in json.loads(latency.read_text())["configs"]:
            ratios = entry.get("rxt_advantage_vs_prefix_cached")
            if ratios:
                lines.append(f"latency {entry['config']}: RxT over prefix-cached stateless at the last turns: TTFT "
                             f"{ratios['ttft_ratio']:.2f}x, per token {ratios['per_token_ratio']:.2f}x, whole turn "
                             f"{ratios['turn_ratio']:.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serving", type=Path, default=None, help="serving.json")
    parser.add_argument("--runs", type=int, default=1, help="how many of its last runs to check")
    parser.add_argument("--latency", type=Path, default=None, help="latency.json")
    args = parser.parse_args(argv)
    print("\n".join(report(args.serving, args.runs, args.latency)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
