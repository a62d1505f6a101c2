"""Host overhead of the runtime per step and per token, against the bare engine on the same model, in one run.

A CPU proxy for the serving benchmark's question "where does the runtime's time go": with a tiny model on the CPU
the engine's step is cheap, so the host's own cost (scheduler, executor launch/collect, events, the crossing into
asyncio, websocket frames) dominates, as it does on a GPU whose step is a captured graph. Per session count:

- ``engine``: `DecodeEngine` alone with the host in the loop (step, argmax, tokens to the host), microseconds per
  step and per token;
- ``runtime``: the real websocket server in this process (`ReactiveModel` + `create_app`) and its clients in a
  separate process (`serving_clients.py`), each client ``--turns`` turns of ``--max-new-tokens`` greedy tokens;
  wall time per decode step (steps counted at the executor) and per answer token, and the host microseconds per
  step above the engine's (``overhead_us_per_step``).

``--breakdown`` also times the parts of the server process (lane: schedule / launch (and in it the decode step,
the prefill, the memory-update pass, the token buffer's copy to the host) / collect / turning tokens into events /
handing the batch over / the model's own forward; commit threads: waiting for the update pass and copying STMs to
the host, the store's saves (per step of the lane, summed over the threads); loop: the drain's fan-out (which includes the
connections' frames written at once), per connection queueing and its direct write, per frame encoding, and
frames sent by the send loop (only while a transport is behind)) by wrapping them, which adds a little cost of its own; the shares, not the totals, are what it is for.
``lane_host_us_per_step`` is the lane's step time less the model's forward: on the CPU the forward is eager
compute, on CUDA a graph replay, so this is the host's own cost either way.

``--turn-timeline`` stamps each turn at the server's stages (`benchmarks/turn_timeline.py`): where the time to first
token (loop -> lane, waiting for a slot and a step, the prefill step, back to the loop) and the memory update
(launch, the pass on the device, the commit's hops back to the lane) go, median and p90 per phase.

``--count-torch-calls`` (a run of its own: counting slows every call) counts the torch calls the lane makes per
step outside the model's forward. Each one lets the server's event-loop thread take the GIL, and the lane may then
wait up to a switch interval to get it back, so this count, not only the Python time, sets the host's cost when
the loop is busy; it is the same on any device.

Steps (``lane_steps``) are the launches with decode or prefill rows; memory-update passes (``update_passes``, most
launched on their own, right when the lane learns that a step ended their turns) are counted apart.

CPU figures are a proxy for the GPU's: the engine's share differs, the host's Python costs are alike.

    python benchmarks/runtime_overhead.py --sessions 1 32 64                   # tiny, CPU
    python benchmarks/runtime_overhead.py --sessions 64 --breakdown --out /tmp/overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import platform
import sys
import threading
import time
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # serving.py and bench_utils.py sit beside this script (imported as a module too)
    sys.path.insert(0, str(HERE))

from bench_utils import RESULTS_DIR, Patches, append_run, git_commit, inside, time_ms
from serving import QUESTION, _run_level, graph_count, start_server, warm_up
from turn_timeline import TurnTimeline

from rxnn_runtime.commit_writer import CommitWriter
from rxnn_runtime.event_bridge import EventBridge
from rxnn_runtime.in_place_commits import InPlaceCommits
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.reactive_model import SWITCH_INTERVAL_S, ReactiveModel
from rxnn_runtime.server import websocket
from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine
from rxt.decoder import Decoder
from rxt.memory_update import MemoryUpdater
from rxt.model import RxT
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer


class Timers:
    """Seconds spent in wrapped callables, by name (nested wraps count in both)."""

    def __init__(self) -> None:
        self.seconds: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()
        self._patches = Patches()

    def wrap(self, owner, name: str, label: str) -> None:
        original = owner.__dict__[name]
        # Instance attributes are plain functions; class attributes may be functions or (async) methods.
        if asyncio.iscoroutinefunction(original):
            @functools.wraps(original)
            async def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    self.seconds[label] += time.perf_counter() - start
                    self.calls[label] += 1
        else:
            @functools.wraps(original)
            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.seconds[label] += time.perf_counter() - start
                    self.calls[label] += 1
        self._patches.replace(owner, name, timed, original)

    def undo(self) -> None:
        self._patches.undo()

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


MODEL_FORWARD = [(Decoder, "forward"), (Decoder, "project_memory"), (RxT, "update_memory")]
"""The model's own compute on the lane: eager on the CPU, only captured (then replayed) on CUDA."""


def _instrument(reactive: ReactiveModel, timers: Timers) -> None:
    lane = [(ReactiveModel, "_step", "lane: step (all)"),
            (reactive.scheduler, "schedule", "lane: scheduler.schedule"),
            (reactive.executor, "launch", "lane: executor.launch"),
            (reactive.executor, "collect", "lane: executor.collect (waits for the device)"),
            (reactive.scheduler, "update_from_output", "lane: tokens -> events"),
            (ReactiveModel, "_emit", "lane: emit (hand the batch over)"),
            (ReactiveModel, "_on_messages", "lane: input messages"),
            (EventBridge, "_dispatch", "loop: fan-out to sessions (bridge + connections)"),
            (websocket.Connection, "_on_events", "loop: connection: queue, coalesce, write (in fan-out)"),
            (websocket.Connection, "_write_now", "loop: frames encode + one direct write (in fan-out)"),
            (websocket.Connection, "_encode", "loop: frame encode"),
            (websocket.Connection, "send_frame", "loop: frame encode + send (send loop)"),
            (DecodeEngine, "step", "lane: launch: decode step (a graph replay on CUDA)"),
            (DecodeEngine, "start_batch", "lane: launch: prefill"),
            (ModelExecutor, "_update_memory", "lane: launch: memory-update pass"),
            (MemoryUpdater, "__call__", "lane: launch: memory-update pass: the updater's call"),
            (ReactiveModel, "_hand_over", "lane: hand the pass's commits over"),
            (ReactiveModel, "_settle", "lane: settle in-place commits (done passes: save, announce)"),
            (InPlaceCommits, "_save", "lane: settle: store saves of one pass"),
            (ModelExecutor, "_tokens_to_host", "lane: launch: token buffer to the host"),
            (CommitWriter, "_stms_to_save", "commit threads: wait for the pass, copy STMs to the host"),
            (type(reactive.store), "save", "commit threads: store saves"),
            (type(reactive.store), "save_many", "commit threads: store saves"),  # a pass's in one go
            *[(owner, name, "lane: model forward (eager on the CPU)") for owner, name in MODEL_FORWARD]]
    for owner, name, label in lane:
        if isinstance(owner, type):
            timers.wrap(owner, name, label)
        else:  # bound method on an instance: wrap it in the instance's dict
            owner.__dict__[name] = getattr(owner, name)
            timers.wrap(owner, name, label)


REPLAYED = [*MODEL_FORWARD, (DecodeEngine, "_step")]
"""What a CUDA graph replays (one call) and the CPU runs eagerly: not counted as the lane's torch calls."""
NOT_OPS = ("__get__", "_set_grad_enabled")  # attribute reads (.shape, .is_cuda) and no_grad: no op dispatched


class _TorchCalls(TorchFunctionMode):
    """Counts torch ops called outside the model's forward (``outside`` tells, per thread)."""

    def __init__(self, outside: threading.local) -> None:
        super().__init__()
        self.outside = outside
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not getattr(self.outside, "model", 0) and getattr(func, "__name__", "") not in NOT_OPS:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def _count_torch_calls(reactive: ReactiveModel, counter: collections.Counter) -> list:
    """Count the lane's torch calls per step (``counter["torch_calls"]``); returns what undoes the wrapping."""
    state = threading.local()
    undo = []
    for owner, name in REPLAYED:
        original = owner.__dict__[name]

        def inside_model(*args, _original=original, **kwargs):
            state.model = getattr(state, "model", 0) + 1
            try:
                return _original(*args, **kwargs)
            finally:
                state.model -= 1

        setattr(owner, name, functools.wraps(original)(inside_model))
        undo.append((owner, name, original))
    step = reactive._step

    def counted_step():
        with _TorchCalls(state) as mode:
            try:
                return step()
            finally:
                counter["torch_calls"] += mode.calls

    reactive._step = counted_step
    return undo


def engine_host_loop(model: RxT, tokenizer: RxTokenizer, n: int, device: torch.device) -> float:
    """Microseconds per step of `DecodeEngine` with ``n`` live slots: step, argmax, tokens to the host."""
    prompt = torch.tensor(InteractionTemplate(tokenizer).query_ids(QUESTION), device=device)
    stm = model.initial_memory(1)[:, 0]
    engine = DecodeEngine(model.decoder, max_slots=n, capacity=model.config.max_seq_len)
    with torch.no_grad():
        first = torch.stack([engine.start(slot, prompt, stm=stm).argmax() for slot in range(n)])
        tokens = torch.zeros(engine.bucket(), dtype=torch.long, device=device)
        tokens[:n] = first

        def host_loop():
            logits = engine.step(tokens)
            tokens.copy_(logits.argmax(dim=-1))
            return tokens.tolist()

        return time_ms(host_loop, device, 3, 30) * 1e3


async def runtime_levels(model: RxT, tokenizer: RxTokenizer, args: argparse.Namespace) -> list[dict]:
    reactive = ReactiveModel(model, tokenizer, max_batch_size=max(args.sessions), max_pending_per_session=4,
                             switch_interval_s=args.switch_interval_s,
                             update_stream=False if args.no_update_stream else None,
                             compile_update=args.compile_update)
    steps = collections.Counter()
    launch = reactive.executor.launch

    def counting_launch(plan, stm_of):  # steps with rows; memory-update passes apart
        rows = len(plan.decode) + len(plan.admit)
        steps["launches"] += bool(rows)
        steps["update_passes"] += bool(plan.updates)
        steps["decode_rows"] += rows
        return launch(plan, stm_of)

    reactive.executor.launch = counting_launch
    timers = Timers()
    if args.breakdown:
        _instrument(reactive, timers)
    undo = _count_torch_calls(reactive, steps) if args.count_torch_calls else []
    timeline = TurnTimeline()
    if args.turn_timeline:
        timeline.install(reactive)
    runner, url = await start_server(reactive)
    levels = []
    try:
        await warm_up(url, args, args.sessions, reactive)  # every turn of every level, as serving.py: no capture is timed
        for n in args.sessions:
            steps.clear()
            timers.reset()
            timeline.reset()
            threads_before = threading.active_count()
            cpu_before = time.process_time()
            captured = graph_count(reactive)
            level = await _run_level(url, n, args.turns, args.max_new_tokens, args.clients_per_process)
            cpu = time.process_time() - cpu_before
            wall_us = level["wall_s"] * 1e6
            entry = {
                "sessions": n, "tokens": level["tokens"], "wall_s": level["wall_s"],
                "lane_steps": steps["launches"], "update_passes": steps["update_passes"],
                "us_per_step": wall_us / max(steps["launches"], 1),
                "us_per_token": wall_us / max(level["tokens"], 1),
                "server_cpu_us_per_token": cpu * 1e6 / max(level["tokens"], 1),
                "aggregate_tokens_per_s": level["aggregate_tokens_per_s"],
                "ttft_ms_p50": level["ttft_ms_p50"], "ttft_ms_p99": level["ttft_ms_p99"],
                "memory_update_ms_median": level["memory_update_ms_median"],  # the server's update_ms
                "memory_update_client_ms_median": level["memory_update_client_ms_median"],
                "threads": threads_before,
                "graph_captures": graph_count(reactive) - captured,  # > 0: captures inside the timing
            }
            if args.breakdown:
                entry["breakdown_us_per_step"] = {
                    label: seconds * 1e6 / max(steps["launches"], 1) for label, seconds in sorted(timers.seconds.items())
                }
                entry["breakdown_calls"] = dict(timers.calls)
                model_s = timers.seconds["lane: model forward (eager on the CPU)"]
                entry["lane_host_us_per_step"] = ((timers.seconds["lane: step (all)"] - model_s) * 1e6
                                                  / max(steps["launches"], 1))
            if args.turn_timeline:
                entry["turn_timeline_ms"] = timeline.summary()
            if args.count_torch_calls:
                entry["lane_torch_calls_per_step"] = steps["torch_calls"] / max(steps["launches"], 1)
            levels.append(entry)
    finally:
        await runner.cleanup()
        reactive.dispose()
        # last wrapped, first unwrapped: the counter wrapped the timers' wrappers, so undoing the timers first left
        # a timer wrapped around the model's forwards for the rest of the process
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)
        timeline.undo()
        timers.undo()
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--clients-per-process", type=int, default=64)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--compile-update", action="store_true",
                        help="memory-update passes fused by torch.compile before capture (ReactiveModel compile_update)")
    parser.add_argument("--no-update-stream", action="store_true",
                        help="memory-update passes on the lane's CUDA stream, not on one of their own (an A/B)")
    parser.add_argument("--breakdown", action="store_true", help="also time the parts of the server process")
    parser.add_argument("--turn-timeline", action="store_true",
                        help="also stamp each turn as it passes the server's stages (benchmarks/turn_timeline.py): "
                             "where time to first token and the memory update go, median and p90 per phase")
    parser.add_argument("--switch-interval-s", type=float, default=SWITCH_INTERVAL_S,
                        help="the GIL switch interval the runtime sets when connected (ReactiveModel's "
                             "switch_interval_s): how long the lane may wait for the GIL after each torch call")
    parser.add_argument("--count-torch-calls", action="store_true",
                        help="count the lane's torch calls per step outside the model (slows every call: a run "
                             "of its own)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (a run appended to its 'runs')")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type != "cuda" and args.out and inside(args.out, RESULTS_DIR):
        parser.error(f"--out {args.out}: CPU timings are a proxy; write them outside benchmarks/results")
    tokenizer = RxTokenizer.default()
    torch.manual_seed(0)
    cfg = RxTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)
    with torch.device(device):
        model = RxT(cfg)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    model = model.to(device=device, dtype=dtype).eval()
    levels = asyncio.run(runtime_levels(model, tokenizer, args))
    for level in levels:
        n = level["sessions"]
        engine_us = engine_host_loop(model, tokenizer, n, device)
        level["engine_us_per_step"] = engine_us
        level["engine_us_per_token"] = engine_us / n
        # Decode steps are not the only lane work (prefills and memory updates run in steps too), so this is an
        # upper bound of the host's own cost per step.
        level["overhead_us_per_step"] = level["us_per_step"] - engine_us
        print(f"{n:>3} sessions: runtime {level['us_per_step']:8.0f} us/step {level['us_per_token']:7.1f} us/token "
              f"(server CPU {level['server_cpu_us_per_token']:6.1f} us/token, {level['aggregate_tokens_per_s']:7.0f}"
              f" tok/s, TTFT p99 {level['ttft_ms_p99']:6.1f} ms, mem update {level['memory_update_ms_median']:5.1f}"
              f" ms) | engine {engine_us:7.0f} us/step {engine_us / n:6.1f} us/token | overhead "
              f"{level['overhead_us_per_step']:8.0f} us/step", flush=True)
        for label, us in level.get("breakdown_us_per_step", {}).items():
            print(f"      {label:<52} {us:8.0f} us/step  ({level['breakdown_calls'][label]} calls)")
        for label, phase in level.get("turn_timeline_ms", {}).items():
            print(f"      turn: {label:<58} median {phase['median_ms']:7.2f} ms  p90 {phase['p90_ms']:7.2f} ms")
        if "lane_host_us_per_step" in level:
            print(f"      lane host time per step, model forward excluded: {level['lane_host_us_per_step']:8.0f} us")
        if "lane_torch_calls_per_step" in level:
            print(f"      lane torch calls per step, model forward excluded: {level['lane_torch_calls_per_step']:6.1f}")
    run = {"benchmark": "runtime_overhead", "commit": git_commit(), "device": args.device,
           "device_name": torch.cuda.get_device_name() if device.type == "cuda" else None,
           "dtype": str(dtype).removeprefix("torch."), "gil_switch_interval_s": sys.getswitchinterval(),
           "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
           "python": platform.python_version(), "preset": args.preset, "update_stream": not args.no_update_stream,
           "command": " ".join(["python", "benchmarks/runtime_overhead.py", *(sys.argv[1:] if argv is None else argv)]),
           "note": ("CPU figures are a proxy for the GPU's: host Python costs alike, the engine's share differs"
                    if device.type == "cpu" else "measured on the GPU"),
           "levels": levels}
    if args.out:
        append_run(args.out, "runtime_overhead", run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
