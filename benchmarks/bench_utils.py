"""What the benchmark scripts share: the timer and the guard that keeps CPU timings out of results/."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def time_ms(
    fn: Callable[[], object], device: torch.device, warmup: int, iters: int, *, sync_each: bool = True
) -> float:
    """Median milliseconds of ``fn`` over ``iters`` runs after ``warmup`` runs.

    On a GPU each run is bracketed by CUDA events. ``sync_each=False`` records all runs back to back and
    synchronises once (steady-state kernel throughput); ``True`` waits after every run (what a caller that
    reads the result each time sees). On the CPU it is wall-clock time.
    """
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
        if sync_each:
            end.synchronize()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` lies under ``folder`` (used to refuse CPU runs writing into benchmarks/results)."""
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def git_commit() -> str:
    """The commit measured: ``RXNN_COMMIT`` (a copied tree without .git, as on the GPU machine) or git's HEAD."""
    if os.environ.get("RXNN_COMMIT"):
        return os.environ["RXNN_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def append_run(path: Path, benchmark: str, run: dict) -> None:
    """Append ``run`` to the ``runs`` of the JSON document at ``path`` (made if absent), atomically."""
    import json

    from rxt.atomic_io import atomic_write_json

    doc = json.loads(path.read_text()) if path.exists() else {"benchmark": benchmark, "runs": []}
    doc["runs"].append(run)
    atomic_write_json(path, doc)
    print(f"wrote {path}")


def top_kernels(prof, n: int, steps: int) -> list[dict]:
    """The ``n`` kernels of a `torch.profiler` trace with the most total time, per profiled step: ``name``,
    ``calls`` and ``total_ms`` (each divided by ``steps``), most time first.

    With CUDA activity these are the GPU kernels (and memcpy/memset) and their device time: where a step's GPU
    time goes. A trace without device events (a CPU run) ranks the CPU ops by self time instead (an op's own time,
    not its children's, so nested ops are not counted twice)."""
    device = [e for e in prof.events() if e.device_type.name == "CUDA"]
    events, time_of = ((device, lambda e: e.device_time) if device else
                       (prof.events(), lambda e: e.self_cpu_time_total))
    totals: dict[str, list[float]] = {}
    for e in events:
        entry = totals.setdefault(e.name, [0, 0.0])
        entry[0] += 1
        entry[1] += time_of(e)
    ranked = sorted(totals.items(), key=lambda item: -item[1][1])[:n]
    return [{"name": name, "calls": calls / steps, "total_ms": us / 1e3 / steps} for name, (calls, us) in ranked]


def print_top_kernels(rows: list[dict], title: str) -> None:
    """`top_kernels`' rows as a small table on stdout."""
    print(f"{title}: top {len(rows)} by total time per step")
    for r in rows:
        print(f"  {r['total_ms']:9.3f} ms  {r['calls']:8.1f} calls  {r['name'][:150]}")


class Patches:
    """Attributes a measurement replaces (timers, stamps), each put back by `undo`, the last replaced first."""

    def __init__(self) -> None:
        self._undo: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, new: Any, original: Any) -> None:
        """Set ``owner.name = new``; `undo` sets ``original`` back (the caller says what that is: a class's own
        function, or an instance's bound method)."""
        setattr(owner, name, new)
        self._undo.append((owner, name, original))

    def undo(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)
        self._undo.clear()
