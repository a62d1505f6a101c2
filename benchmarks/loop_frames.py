"""The event loop's cost of delivering token events to websocket clients, without a model in the way.

A stand-in for `ReactiveModel` (its ``batches`` stream and ``submit``) answers every client's query from a lane
thread of its own: one batch per ``--step-ms`` with a Token for every session (``--tokens`` steps), then the
answer, memory_update_started and memory_updated. The real server (`create_app`: `EventBridge`, websocket
`Connection`s) delivers them to ``--sessions`` websocket clients in a separate process (`serving_clients.py`,
JSON frames, one connection per session). Reported per level: the loop thread's CPU time per step and per token
(``time.thread_time`` on the loop thread from the start signal to the last client's end: other processes on
the machine's cores change it far less than wall time), the steps and the frames the clients got.

On a CPU-only machine this isolates what `benchmarks/runtime_overhead.py --breakdown` can only show under the
noise of an eager model sharing the cores: the loop's own work per step (fan-out, frames, socket writes, task
switches), which in a server competes with the model's lane for one interpreter.

    python benchmarks/loop_frames.py --sessions 1 32 64 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from aiohttp import web
from bench_utils import append_run, git_commit
from reactivex.subject import Subject

from rxnn_runtime.events import AnswerDone, MemoryUpdated, MemoryUpdateStarted, QueryAccepted, Token
from rxnn_runtime.messages import Query
from rxnn_runtime.server.app import create_app
from rxnn_runtime.stores import InMemoryStore

CLIENTS = HERE / "serving_clients.py"


class ScriptedModel:
    """Answers once every expected session has asked: ``tokens`` steps of one Token per session, from a thread."""

    def __init__(self, sessions: int, tokens: int, step_s: float) -> None:
        self.batches = Subject()
        self.sessions, self.tokens, self.step_s = sessions, tokens, step_s
        self.template = SimpleNamespace(query_ids=lambda text: [0] * (2 + len(text) // 4))
        self.model = SimpleNamespace(config=SimpleNamespace(max_seq_len=4096))
        self.store = InMemoryStore()
        self._queries: list[Query] = []
        self._seq = 0
        self._lock = threading.Lock()
        self.steps = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def submit(self, message) -> None:
        if not isinstance(message, Query):
            return
        with self._lock:
            self._queries.append(message)
            self.batches.on_next((QueryAccepted(message.session_id, 1, self._next(), message.query_id,
                                                text=message.text),))
            if len(self._queries) == self.sessions:
                queries, self._queries = self._queries, []
                threading.Thread(target=self._answer, args=(queries,), daemon=True).start()

    def _answer(self, queries: list[Query]) -> None:
        for index in range(self.tokens):
            time.sleep(self.step_s)
            with self._lock:
                self.batches.on_next(tuple(Token(q.session_id, 1, self._next(), q.query_id, index=index,
                                                 token_id=100 + index % 50, text=" tok") for q in queries))
                self.steps += 1
        with self._lock:
            done = []
            for q in queries:
                done.append(AnswerDone(q.session_id, 1, self._next(), q.query_id, text=" tok" * self.tokens,
                                       token_ids=tuple(100 + i % 50 for i in range(self.tokens))))
                done.append(MemoryUpdateStarted(q.session_id, 1, self._next(), q.query_id))
            self.batches.on_next(tuple(done))
        time.sleep(self.step_s)
        with self._lock:
            self.batches.on_next(tuple(MemoryUpdated(q.session_id, 1, self._next(), q.query_id, version=1)
                                       for q in queries))

    def lane_health(self, timeout: float = 2.0) -> dict:
        return {"alive": True, "latency_ms": 0.0, "queued_turns": 0, "running_turns": 0, "busy_sessions": 0}

    def wait_idle(self, timeout: float = 30.0) -> bool:
        return True


async def level(sessions: int, tokens: int, step_s: float) -> dict:
    model = ScriptedModel(sessions, tokens, step_s)
    runner = web.AppRunner(create_app(model, outbox_limit=4096))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/ws"
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(CLIENTS), "--url", url, "--turns", "1", "--max-new-tokens", str(tokens),
            "--sessions", *[f"loop-{sessions}-{i}" for i in range(sessions)],
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"client process did not get ready: {line!r}")
        cpu = time.thread_time()
        wall = time.perf_counter()
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
        out, _ = await asyncio.wait_for(proc.communicate(), 600)
        cpu = time.thread_time() - cpu
        wall = time.perf_counter() - wall
        if proc.returncode != 0:
            raise RuntimeError(f"client process failed ({proc.returncode})")
        report = json.loads(out.decode().strip().splitlines()[-1])
        got = sum(t["tokens"] for t in report["turns"])
        if got != sessions * tokens:
            raise RuntimeError(f"clients got {got} tokens, expected {sessions * tokens}")
    finally:
        await runner.cleanup()
    return {"sessions": sessions, "steps": model.steps, "tokens": got, "loop_cpu_s": cpu, "wall_s": wall,
            "loop_cpu_us_per_step": cpu * 1e6 / model.steps, "loop_cpu_us_per_token": cpu * 1e6 / got}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 32, 64])
    parser.add_argument("--tokens", type=int, default=96, help="steps (one token per session each)")
    parser.add_argument("--step-ms", type=float, default=2.0, help="the stand-in lane's time per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (a run appended to its 'runs')")
    args = parser.parse_args(argv)
    levels = []
    for n in args.sessions:
        runs = [asyncio.run(level(n, args.tokens, args.step_ms / 1e3)) for _ in range(args.repeats)]
        entry = {"sessions": n, "steps": runs[0]["steps"], "tokens": runs[0]["tokens"],
                 "loop_cpu_us_per_step_median": statistics.median(r["loop_cpu_us_per_step"] for r in runs),
                 "loop_cpu_us_per_token_median": statistics.median(r["loop_cpu_us_per_token"] for r in runs),
                 "loop_cpu_us_per_step_all": [round(r["loop_cpu_us_per_step"], 1) for r in runs],
                 "wall_s_median": statistics.median(r["wall_s"] for r in runs)}
        levels.append(entry)
        print(f"{n:>3} sessions: loop CPU {entry['loop_cpu_us_per_step_median']:8.1f} us/step "
              f"{entry['loop_cpu_us_per_token_median']:6.2f} us/token  (runs {entry['loop_cpu_us_per_step_all']}, "
              f"{entry['steps']} steps, wall {entry['wall_s_median']:.2f} s)", flush=True)
    run = {"benchmark": "loop_frames", "commit": git_commit(), "device": "cpu", "python": platform.python_version(),
           "processor": platform.processor() or platform.machine(),
           "command": " ".join(["python", "benchmarks/loop_frames.py", *(sys.argv[1:] if argv is None else argv)]),
           "tokens_per_session": args.tokens, "step_ms": args.step_ms, "levels": levels}
    if args.out:
        append_run(args.out, "loop_frames", run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
