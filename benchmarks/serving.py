"""Serving benchmark: the runtime over websockets against its own engine, in one run.

Starts the real aiohttp server on 127.0.0.1 in this process and runs the websocket clients in separate processes
(`serving_clients.py`, at most ``--clients-per-process`` each, as vLLM's serving benchmark keeps its clients out
of the server's interpreter). Each client holds a ``--turns``-turn conversation (greedy, ``--max-new-tokens``
per answer, the next query after the previous turn's memory_updated). Per level: time to first token p50/p99,
aggregate tokens/s (all answer tokens / wall time from the first client's start to the last client's end), median
memory-update time as the server measures it (``memory_update_ms_median``: ``update_ms`` of the memory_updated
frame, from the turn's last token reaching the model lane to its commit: what the issue's "memory update" means,
per turn) and as the clients see it beside it (``memory_update_client_ms_median``: answer frame -> memory_updated
frame, which for one session is ~0: the update is done before the answer frame reaches the client). Every level first runs once unmeasured, so
CUDA-graph captures are not timed, then ``--repeats`` times (default 3): the run of median aggregate throughput is
reported, every run's figures listed beside it.

Then, in the same process on the same model, the anchor: `DecodeEngine` alone at the same session counts
(``engine_tokens_per_s``: sessions x 1000 / one captured decode step's median ms, the `benchmarks/decode.py`
definition), and the same with the host in the loop (``engine_host_loop_tokens_per_s``: step, argmax, copy the
tokens to the host, every step), with the runtime's ratio to each.

    python benchmarks/serving.py --device cpu --clients 1 4 --turns 2 --out /tmp/serving_cpu.json     # smoke
    python benchmarks/serving.py --clients 1 32 64 --out benchmarks/results/serving.json              # GPU
    python benchmarks/serving.py --config 1b --clients 1 32 64 --out benchmarks/results/serving.json  # ~1B
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from aiohttp import web
from bench_utils import git_commit, time_ms

from rxnn_runtime import event_bridge
from rxnn_runtime.engine_process import EngineProcess, EngineSpec
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server.app import create_app
from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.decode_engine import DecodeEngine
from rxt.memory_update import MemoryUpdater
from rxt.model import RxT
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer

CLIENTS = Path(__file__).resolve().parent / "serving_clients.py"
QUESTION = "Hello, how are you today?"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _percentile_or_none(values: list[float | None], q: float) -> float | None:
    known = [v for v in values if v is not None]
    return _percentile(known, q) if known else None


async def _run_level(url: str, clients: int, turns: int, max_new_tokens: int, per_process: int) -> dict:
    sessions = [f"bench-{clients}-{time.monotonic_ns()}-{i}" for i in range(clients)]
    groups = [sessions[i : i + per_process] for i in range(0, clients, per_process)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENTS), "--url", url, "--turns", str(turns), "--max-new-tokens",
            str(max_new_tokens), "--sessions", *group,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        for group in groups
    ]
    for proc in procs:  # every client connected before anyone starts
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"client process did not get ready: {line!r}")
    go = time.time()
    for proc in procs:
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    reports = []
    for proc in procs:
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        if proc.returncode != 0:
            raise RuntimeError(f"client process failed ({proc.returncode})")
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))
    # From the first client's start (the start signal reaching a process takes a variable few ms) to the last end.
    start = min(r["start"] for r in reports)
    wall = max(r["end"] for r in reports) - start
    turns_done = [t for r in reports for t in r["turns"]]
    tokens = sum(t["tokens"] for t in turns_done)
    ttft = [t["ttft_ms"] for t in turns_done]
    return {
        "clients": clients,
        "client_processes": len(procs),
        "turns_per_client": turns,
        "max_new_tokens": max_new_tokens,
        "tokens": tokens,
        "ttft_ms_p50": statistics.median(ttft),
        "ttft_ms_p99": _percentile(ttft, 0.99),
        "client_tokens_per_s_median": statistics.median(t["tokens"] / max(t["answer_s"], 1e-9) for t in turns_done),
        "aggregate_tokens_per_s": tokens / wall,
        "memory_update_ms_median": _median_or_none([t["memory_update_ms"] for t in turns_done]),
        "memory_update_ms_p90": _percentile_or_none([t["memory_update_ms"] for t in turns_done], 0.9),
        "memory_update_client_ms_median": statistics.median(t["memory_update_client_ms"] for t in turns_done),
        "wall_s": wall,
        "start_signal_ms": (start - go) * 1e3,
    }


def _ab_arms(args: argparse.Namespace, reactive: ReactiveModel) -> list[tuple[str, object]]:
    """The A/B arms asked for: ``(label, context manager factory)`` setting the arm's value for one run."""
    arms = []
    if args.ab_update_priority:
        arms.append(("update_stream_priority=high", lambda: _update_priority(reactive)))
    if args.ab_poll_max_ms is not None:
        arms.append((f"poll_max_ms={args.ab_poll_max_ms:g}",
                     lambda: _setting(event_bridge, "POLL_MAX_S", args.ab_poll_max_ms / 1e3)))
    if getattr(args, "fused_updater", None) is not None:
        arms.append(("compile_update", lambda: _setting(reactive.executor, "updater", args.fused_updater)))
    if args.ab_no_settle_while_waiting:
        arms.append(("settle_while_waiting=False", lambda: _setting(reactive, "settle_while_waiting", False)))
    for seconds in args.ab_switch_interval_s or ():
        arms.append((f"switch_interval_s={seconds:g}", lambda seconds=seconds: _switch_interval(seconds)))
    return arms


@contextlib.contextmanager
def _setting(owner, name: str, value):
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, old)


@contextlib.contextmanager
def _update_priority(reactive: ReactiveModel):
    """Memory-update passes on a stream of the highest priority for one run (`ModelExecutor.set_update_priority`)."""
    reactive.executor.set_update_priority(True)
    try:
        yield
    finally:
        reactive.executor.set_update_priority(False)


@contextlib.contextmanager
def _switch_interval(seconds: float):
    """Python's GIL switch interval for one run (process-wide; the runtime lowered it at connect)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _median_run(runs: list[dict]) -> dict:
    """The run of median aggregate throughput (a copy)."""
    return dict(sorted(runs, key=lambda run: run["aggregate_tokens_per_s"])[(len(runs) - 1) // 2])


def _repeat_figures(runs: list[dict]) -> list[dict]:
    return [{k: run[k] for k in ("aggregate_tokens_per_s", "ttft_ms_p50", "ttft_ms_p99", "memory_update_ms_median",
                                 "memory_update_client_ms_median")} for run in runs]


async def start_server(reactive: ReactiveModel) -> tuple[web.AppRunner, str]:
    """Connect ``reactive`` and serve it over websockets on 127.0.0.1 (a free port): ``(runner, ws_url)``."""
    reactive.connect()
    runner = web.AppRunner(create_app(reactive, outbox_limit=4096))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"


def graph_count(reactive: ReactiveModel) -> int:
    """CUDA graphs the runtime has captured so far (decode buckets, prefill and memory-update shapes): a level
    that captures any paid for it inside its timing (tens of ms each, the lane stalled for every session)."""
    if isinstance(reactive, EngineProcess):
        return reactive.call("graph_count")
    return reactive.executor.graph_count()


async def warm_up(url: str, args: argparse.Namespace, sessions: list[int], reactive: ReactiveModel) -> None:
    """Every graph the clients' turns can need, at every batch size, captured first (`ModelExecutor.precapture`:
    the decode step of each batch bucket, the prefill and memory-update shapes; which batches form depends on when
    queries arrive, so a warm-up level alone may miss some: at 64 clients it once left the 64-row decode bucket to
    the timed level), then each level once in full, unmeasured (allocator, sockets, the clients' start-up), before
    anything is timed. Each level records ``graph_captures``: 0 when the precapture covered it."""
    sizes = precapture_sizes(reactive.tokenizer, args)
    if isinstance(reactive, EngineProcess):  # the child captured them before it reported ready (EngineSpec)
        captured = reactive.call("graph_count")
    else:
        captured = reactive.executor.precapture(**sizes)
    if getattr(args, "ab_compile_update", False):  # the arm's fused update passes: compiled and captured now, outside any timing
        executor, plain = reactive.executor, reactive.executor.updater
        executor.updater = MemoryUpdater(reactive.model, pad_id=reactive.tokenizer.pad_id,
                                         max_batch=executor.engine.max_slots, compile_pass=True)
        try:
            start = time.perf_counter()
            executor.precapture(**sizes)
            print(f"warm-up: fused memory-update graphs compiled and captured in {time.perf_counter() - start:.1f} s",
                  flush=True)
            args.fused_updater = executor.updater
        finally:
            executor.updater = plain
    memory = (f"; CUDA memory reserved {torch.cuda.memory_reserved() / 2**30:.1f} GiB"
              if not isinstance(reactive, EngineProcess) and reactive.executor.device.type == "cuda" else "")
    print(f"warm-up: {captured} decode, prefill and memory-update graphs captured ahead{memory}", flush=True)
    for n in sorted(set(sessions)):
        await _run_level(url, n, args.turns, args.max_new_tokens, args.clients_per_process)


async def serve_levels(model: RxT, tokenizer: RxTokenizer, args: argparse.Namespace) -> list[dict]:
    interval = {} if args.switch_interval_s is None else {"switch_interval_s": args.switch_interval_s}
    settings = dict(max_batch_size=max(args.clients), max_pending_per_session=4,
                    update_stream=False if args.no_update_stream else None, compile_update=args.compile_update,
                    **interval)
    if args.engine_process:  # the lane in a child process that builds the same seeded model (bench_parts)
        reactive = EngineProcess(EngineSpec(bench_parts, ({k: getattr(args, k) for k in BENCH_MODEL_ARGS},),
                                            reactive_kwargs=settings, precapture=precapture_sizes(tokenizer, args)))
    else:
        reactive = ReactiveModel(model, tokenizer, **settings)
        reactive.executor.set_update_priority(args.update_priority == "high")
    runner, url = await start_server(reactive)
    levels = []
    try:
        await warm_up(url, args, args.clients, reactive)
        for n in args.clients:
            captured = graph_count(reactive)
            # A level lasts a fraction of a second, so one hiccup (a GC pause, a late client process) moves it by
            # several percent: run it ``--repeats`` times and keep the run of median aggregate throughput.
            # The A/B arms (--ab-poll-max-ms, --ab-switch-interval-s): at the --ab-levels, each timed run is followed
            # by one run of each arm (interleaved, so the machine's drift hits every arm alike); the level reports the
            # default arm, the others beside it.
            arms = _ab_arms(args, reactive) if n in (args.ab_levels or args.clients) else []
            runs, others = [], {label: [] for label, _ in arms}
            for _ in range(args.repeats):
                runs.append(await _run_level(url, n, args.turns, args.max_new_tokens, args.clients_per_process))
                for label, arm in arms:
                    with arm():
                        others[label].append(await _run_level(url, n, args.turns, args.max_new_tokens,
                                                              args.clients_per_process))
            level = _median_run(runs)
            level["repeats"] = _repeat_figures(runs)
            if arms:
                level["ab_arms"] = []
                for label, arm_runs in others.items():
                    median = _median_run(arm_runs)
                    level["ab_arms"].append({"arm": label, "repeats": _repeat_figures(arm_runs),
                                             **{k: median[k] for k in ("aggregate_tokens_per_s", "ttft_ms_p50",
                                                                       "ttft_ms_p99", "memory_update_ms_median",
                                                                       "wall_s")}})
                    print(f"    (A/B, {label}: aggregate {median['aggregate_tokens_per_s']:9.1f} tok/s, TTFT p99 "
                          f"{median['ttft_ms_p99']:7.1f} ms, mem update {median['memory_update_ms_median']:.2f} ms; runs "
                          f"{[round(r['aggregate_tokens_per_s']) for r in arm_runs]} against "
                          f"{[round(r['aggregate_tokens_per_s']) for r in runs]})", flush=True)
            level["graph_captures"] = graph_count(reactive) - captured
            print(f"runtime {n:>3} clients: TTFT p50 {level['ttft_ms_p50']:7.1f} ms p99 {level['ttft_ms_p99']:7.1f} ms"
                  f"  aggregate {level['aggregate_tokens_per_s']:9.1f} tok/s  mem update (server) "
                  f"{level['memory_update_ms_median']:6.2f} ms (client {level['memory_update_client_ms_median']:6.2f}"
                  f" ms)  graphs captured {level['graph_captures']}", flush=True)
            levels.append(level)
    finally:
        await runner.cleanup()
        reactive.dispose()
    return levels


def engine_anchor(model: RxT, tokenizer: RxTokenizer, sessions: list[int], device: torch.device) -> dict:
    """`DecodeEngine` alone: n live slots, one captured step (and one step with the host in the loop)."""
    prompt = torch.tensor(InteractionTemplate(tokenizer).query_ids(QUESTION), device=device)
    stm = model.initial_memory(1)[:, 0]
    engine = DecodeEngine(model.decoder, max_slots=max(sessions), capacity=model.config.max_seq_len)
    out = {}
    with torch.no_grad():
        for n in sessions:
            for slot in range(engine.max_slots):
                engine.release(slot)
            first = torch.stack([engine.start(slot, prompt, stm=stm).argmax() for slot in range(n)])
            tokens = torch.zeros(engine.bucket(), dtype=torch.long, device=device)
            tokens[:n] = first
            step_ms = time_ms(lambda tokens=tokens: engine.step(tokens), device, 3, 20)

            def host_loop(tokens=tokens):
                logits = engine.step(tokens)
                tokens.copy_(logits.argmax(dim=-1))
                return tokens.tolist()

            host_ms = time_ms(host_loop, device, 3, 20)
            for slot in range(n):  # the timed steps advanced every row; keep within capacity for the next n
                engine.release(slot)
            out[n] = {"engine_tokens_per_s": n * 1e3 / step_ms, "engine_step_ms": step_ms,
                      "engine_host_loop_tokens_per_s": n * 1e3 / host_ms}
            print(f"engine  {n:>3} sessions: {out[n]['engine_tokens_per_s']:9.1f} tok/s (step {step_ms:.3f} ms), "
                  f"host loop {out[n]['engine_host_loop_tokens_per_s']:9.1f} tok/s", flush=True)
    return out


def memory_update_check(model: RxT, tokenizer: RxTokenizer, device: torch.device) -> dict:
    """The graphed memory update against the eager one on the same rows, and both timed (1 and 64 rows)."""

    template = InteractionTemplate(tokenizer)
    row = template.interaction_ids(QUESTION, "I am fine, thank you. " * 4)
    out = {}
    graphed, eager = MemoryUpdater(model, pad_id=tokenizer.pad_id), MemoryUpdater(model, use_cuda_graphs=False)
    for n in (1, 64):
        stm = model.initial_memory(n).contiguous()
        rows = [row[: len(row) - (i % 7)] for i in range(n)]
        diff = (graphed(stm, rows).float() - eager(stm, rows).float()).abs().max().item()
        out[n] = {"graph_ms": time_ms(lambda stm=stm, rows=rows: graphed(stm, rows), device, 3, 10),
                  "eager_ms": time_ms(lambda stm=stm, rows=rows: eager(stm, rows), device, 1, 5),
                  "graph_vs_eager_max_abs_diff": diff}
        print(f"memory update {n:>2} rows: graph {out[n]['graph_ms']:.2f} ms, eager {out[n]['eager_ms']:.2f} ms, "
              f"max |diff| {diff:.2e}", flush=True)
    # Batched prefill: the graph per (batch, length) bucket against the eager pass, on the same 5 queries.
    prompts = [torch.tensor(template.query_ids(q)) for q in (QUESTION, "Hi", "What is the weather like today?",
                                                              "Tell me a story.", "Why?")]
    stm = model.initial_memory(5).contiguous()
    results = []
    with torch.no_grad():
        for graphs in (True, False):
            engine = DecodeEngine(model.decoder, max_slots=8, capacity=model.config.max_seq_len,
                                  use_cuda_graphs=graphs)
            results.append(engine.start_batch([6, 1, 3, 0, 4], prompts, stm=stm).float())
    out["prefill_5_rows_graph_vs_eager_max_abs_diff"] = (results[0] - results[1]).abs().max().item()
    print(f"prefill 5 rows: graph vs eager max |diff| {out['prefill_5_rows_graph_vs_eager_max_abs_diff']:.2e}")
    return out


def plot(run: dict, path: Path) -> None:
    """Aggregate tokens/s against sessions: the runtime beside its engine (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(run["levels"], key=lambda lv: lv["clients"])
    clients = [lv["clients"] for lv in levels]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(clients, [lv["engine_tokens_per_s"] for lv in levels], "o-", label="DecodeEngine alone")
    ax.plot(clients, [lv["aggregate_tokens_per_s"] for lv in levels], "s-", label="runtime over websockets")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent sessions")
    ax.set_ylabel("aggregate tokens/s")
    ax.set_title(f"{run['preset']}, {run['device']} ({run['runtime_version'].split(':')[0]})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_model(args: argparse.Namespace, tokenizer: RxTokenizer) -> tuple[RxT, torch.device, torch.dtype]:
    """The model a benchmark measures, seeded: ``args.config`` (the ~1B widths of `benchmarks/decode.py`; it
    becomes ``args.preset``) or ``args.preset``, on ``args.device`` in ``args.dtype`` (default: bfloat16 on CUDA,
    float32 on the CPU). Returns ``(model, device, dtype)``."""
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    if args.config:
        from decode import CONFIGS  # the ~1B widths, shared with the decode benchmark

        spec = CONFIGS[args.config]
        args.preset = args.config
        cfg = RxTConfig.preset(spec["preset"], vocab_size=tokenizer.vocab_size, **spec["overrides"])
    else:
        cfg = RxTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)
    with torch.device(device):  # initialised where it runs: a ~1B model built on the host first takes long
        model = RxT(cfg)
    return model.to(device=device, dtype=dtype).eval(), device, dtype


BENCH_MODEL_ARGS = ("device", "dtype", "preset", "config")


def bench_parts(settings: dict) -> tuple[RxT, RxTokenizer, None]:
    """`bench_model` of ``settings`` (``BENCH_MODEL_ARGS``) with its tokenizer, for `EngineSpec` (the child process
    builds the same seeded weights as the parent's anchor); the store: the runtime's default."""
    tokenizer = RxTokenizer.default()
    model, _, _ = bench_model(argparse.Namespace(**settings), tokenizer)
    return model, tokenizer, None


def precapture_sizes(tokenizer: RxTokenizer, args: argparse.Namespace) -> dict[str, int]:
    """`ModelExecutor.precapture`'s sizes for the clients' questions and answers."""
    from serving_clients import QUESTIONS

    prompt = max(len(InteractionTemplate(tokenizer).query_ids(q)) for q in QUESTIONS)
    return {"max_prompt_tokens": prompt, "max_interaction_tokens": prompt + args.max_new_tokens + 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--config", choices=["1b"], default=None,
                        help="instead of --preset: the ~1B configuration of benchmarks/decode.py")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--clients-per-process", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per level; the one of median aggregate throughput is reported (all listed)")
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--poll-ms", type=float, default=None,
                        help="the event bridge's poll interval while steps keep coming (default: the runtime's "
                             "rxnn_runtime.event_bridge.POLL_S), for an A/B of the loop's fan-out cost")
    parser.add_argument("--poll-max-ms", type=float, default=None,
                        help="the event bridge's longest poll interval under load (default: the runtime's "
                             "rxnn_runtime.event_bridge.POLL_MAX_S); equal to --poll-ms: a fixed interval (an A/B)")
    parser.add_argument("--ab-poll-max-ms", type=float, default=None,
                        help="an interleaved A/B in the same run: each timed run is followed by one with this poll "
                             "cap (e.g. 1: a fixed 1 ms poll, the runtime before polls were spaced by load)")
    parser.add_argument("--ab-switch-interval-s", type=float, nargs="+", default=None,
                        help="interleaved A/B arms of Python's GIL switch interval, one per value (the runtime sets "
                             "rxnn_runtime.reactive_model.SWITCH_INTERVAL_S at connect), e.g. 0.0001 0.00005")
    parser.add_argument("--ab-update-priority", action="store_true",
                        help="an interleaved A/B arm: memory-update passes on a stream of the highest priority")
    parser.add_argument("--engine-process", action="store_true",
                        help="the model's lane in a child process (rxnn_runtime.engine_process), apart from the "
                             "server's event loop")
    parser.add_argument("--compile-update", action="store_true",
                        help="memory-update passes fused by torch.compile before capture (ReactiveModel compile_update)")
    parser.add_argument("--ab-compile-update", action="store_true",
                        help="an interleaved A/B arm: the memory-update passes fused by torch.compile")
    parser.add_argument("--ab-no-settle-while-waiting", action="store_true",
                        help="A/B: the lane sees finished memory-update passes only at the end of its steps "
                             "(ReactiveModel settle_while_waiting=False) against the default")
    parser.add_argument("--update-priority", choices=["normal", "high"], default="normal",
                        help="the memory-update passes' stream priority (ModelExecutor.set_update_priority)")
    parser.add_argument("--switch-interval-s", type=float, default=None,
                        help="the GIL switch interval the runtime sets at connect (default: its SWITCH_INTERVAL_S)")
    parser.add_argument("--ab-levels", type=int, nargs="+", default=None,
                        help="the session counts that run the A/B (default: every level)")
    parser.add_argument("--no-update-stream", action="store_true",
                        help="memory-update passes on the lane's CUDA stream, not on one of their own (an A/B)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output: a run appended to its 'runs'")
    parser.add_argument("--plot", type=Path, default=None, help="PNG: aggregate tokens/s, runtime beside engine")
    parser.add_argument("--plot-from", type=Path, default=None,
                        help="only plot the last run of this JSON file to --plot (no measurement)")
    args = parser.parse_args()
    if args.plot_from:
        if not args.plot:
            parser.error("--plot-from needs --plot")
        plot(json.loads(args.plot_from.read_text())["runs"][-1], args.plot)
        return
    if args.repeats < 1:
        parser.error(f"--repeats={args.repeats} must be >= 1")
    if args.engine_process and (args.ab_compile_update or args.ab_no_settle_while_waiting or args.ab_update_priority
                                or args.update_priority == "high"):
        parser.error("--engine-process: the A/B arms and --update-priority reach into the lane, which is then in "
                     "another process; run them without it")
    if any(n < 1 or n > 256 for n in args.clients):
        parser.error("--clients values must be within 1..256 (the benchmark targets 127.0.0.1 only)")
    if args.poll_ms is not None:
        if not args.poll_ms > 0:
            parser.error(f"--poll-ms={args.poll_ms} must be > 0")
        event_bridge.POLL_S = args.poll_ms / 1e3  # read at every poll
    if args.poll_max_ms is not None:
        if not args.poll_max_ms >= event_bridge.POLL_S * 1e3:
            parser.error(f"--poll-max-ms={args.poll_max_ms} must be >= the poll interval "
                         f"({event_bridge.POLL_S * 1e3:g} ms)")
        event_bridge.POLL_MAX_S = args.poll_max_ms / 1e3
    tokenizer = RxTokenizer.default()
    model, device, dtype = bench_model(args, tokenizer)
    levels = asyncio.run(serve_levels(model, tokenizer, args))
    anchor = engine_anchor(model, tokenizer, sorted(set(args.clients)), device)
    update_check = memory_update_check(model, tokenizer, device)
    for level in levels:
        ref = anchor[level["clients"]]
        level.update(ref)
        level["ratio_to_engine"] = level["aggregate_tokens_per_s"] / ref["engine_tokens_per_s"]
        level["ratio_to_engine_host_loop"] = level["aggregate_tokens_per_s"] / ref["engine_host_loop_tokens_per_s"]
    by_n = {lv["clients"]: lv for lv in levels}
    ratio = None
    if 1 in by_n and 32 in by_n:
        ratio = by_n[32]["aggregate_tokens_per_s"] / by_n[1]["aggregate_tokens_per_s"]
        print(f"aggregate throughput 32 sessions / 1 session: {ratio:.1f}x")
    run = {
        "benchmark": "serving",
        "runtime_version": f"commit {git_commit()}: TurnScheduler/ModelExecutor split, batched prefill and memory "
                           "updates, STM on the device, commits off the lane, per-step event batches, step N+1 "
                           "launched before step N's tokens reach the host, last tokens not fed again, update passes "
                           "on a stream of their own, commits kept on the device by the in-process store",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "gil_switch_interval_s": sys.getswitchinterval(),  # as the runtime left it (ReactiveModel.connect)
        "dtype": str(dtype).removeprefix("torch."),
        "command": " ".join(["python", *sys.argv]),
        "preset": args.preset,
        "parameters": model.num_parameters(),
        "levels": levels,
        "aggregate_ratio_32_vs_1": ratio,
        # memory_update_ms_median is the server's update_ms (turn's last token on the lane -> commit) since i14i;
        # earlier runs (without this key) hold the client's answer frame -> memory_updated frame there
        "memory_update_ms_source": "server update_ms",
        "update_stream": not args.no_update_stream,
        "update_stream_priority": args.update_priority,
        "compile_update": args.compile_update,
        "settle_while_waiting": True,  # the runtime's default since the eighth session (ReactiveModel)
        "engine_process": args.engine_process,
        "event_bridge_poll_s": event_bridge.POLL_S,
        "event_bridge_poll_max_s": event_bridge.POLL_MAX_S,  # polls spaced by load up to this (poll_delay)
        "event_bridge_poll_load_factor": event_bridge.POLL_LOAD_FACTOR,
        "memory_update_bare": update_check,
        # the most memory the run held (graph pools included): the ~1B config once ran out capturing graphs
        "cuda_max_memory_reserved_gib": (torch.cuda.max_memory_reserved() / 2**30 if device.type == "cuda" else None),
    }
    if args.out:
        doc = {"benchmark": "serving", "runs": []}
        if args.out.exists():
            doc = json.loads(args.out.read_text())
        doc["runs"].append(run)
        atomic_write_json(args.out, doc)
        print(f"wrote {args.out}")
    if args.plot:
        plot(run, args.plot)


if __name__ == "__main__":
    main()
