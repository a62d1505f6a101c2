"""Serving benchmark: N concurrent websocket clients, each holding a multi-turn conversation with a `nano` RxT.

Starts the real aiohttp server on 127.0.0.1 in this process, connects N real websocket clients (1, 8, 32, 64
by default) and has each run ``--turns`` turns. Reports time to first token (p50/p99), tokens/s per client and
in aggregate, and memory-update time (answer frame -> memory_updated frame), then the ratio of aggregate
throughput at 32 sessions to 1 session, which is what batching buys. Untrained weights are fine for timing.

    python benchmarks/serving.py --device cpu --clients 1 8 --turns 2          # smoke
    python benchmarks/serving.py --device cuda --out benchmarks/results/serving.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import torch
from aiohttp import web

from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server.app import create_app
from rxt.atomic_io import atomic_write_json
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer

QUESTIONS = ("Hello, how are you today?", "What did you do this weekend?", "Tell me about your favourite book.")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def _client(url: str, session_id: str, turns: int, max_new_tokens: int, stats: dict) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        for turn in range(turns):
            query = {
                "type": "query", "session": session_id, "id": f"{session_id}-{turn}",
                "text": QUESTIONS[turn % len(QUESTIONS)],
                "options": {"max_new_tokens": max_new_tokens, "temperature": 0.0},
            }
            sent = time.perf_counter()
            await ws.send_str(json.dumps(query))
            first = answered = None
            tokens = 0
            while True:
                msg = await asyncio.wait_for(ws.receive(), timeout=300)
                frame = json.loads(msg.data)
                kind = frame.get("type")
                if kind == "token":
                    first = first or time.perf_counter()
                elif kind == "answer":
                    answered = time.perf_counter()
                    tokens = len(frame.get("token_ids", []))
                elif kind == "memory_updated" and answered is not None:
                    stats["memory_update_ms"].append((time.perf_counter() - answered) * 1e3)
                    break
                elif kind == "error":
                    raise RuntimeError(f"server error: {frame}")
            stats["ttft_ms"].append(((first or answered) - sent) * 1e3)
            stats["client_tokens_per_s"].append(tokens / max(answered - sent, 1e-9))
            stats["tokens"] += tokens


async def _run_level(url: str, clients: int, turns: int, max_new_tokens: int) -> dict:
    stats = {"ttft_ms": [], "client_tokens_per_s": [], "memory_update_ms": [], "tokens": 0}
    start = time.perf_counter()
    await asyncio.gather(
        *(_client(url, f"bench-{clients}-{i}", turns, max_new_tokens, stats) for i in range(clients))
    )
    wall = time.perf_counter() - start
    return {
        "clients": clients,
        "turns_per_client": turns,
        "max_new_tokens": max_new_tokens,
        "ttft_ms_p50": statistics.median(stats["ttft_ms"]),
        "ttft_ms_p99": _percentile(stats["ttft_ms"], 0.99),
        "client_tokens_per_s_median": statistics.median(stats["client_tokens_per_s"]),
        "aggregate_tokens_per_s": stats["tokens"] / wall,
        "memory_update_ms_median": statistics.median(stats["memory_update_ms"]),
        "wall_s": wall,
    }


async def main_async(args: argparse.Namespace) -> dict:
    tokenizer = RxTokenizer.default()
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset(args.preset, vocab_size=tokenizer.vocab_size)).to(args.device).eval()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=max(args.clients), max_pending_per_session=4)
    reactive.connect()
    runner = web.AppRunner(create_app(reactive))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/ws"
    try:
        await _run_level(url, 1, 1, 4)  # warm-up
        levels = []
        for n in args.clients:
            level = await _run_level(url, n, args.turns, args.max_new_tokens)
            print(
                f"{n:>3} clients: TTFT p50 {level['ttft_ms_p50']:8.1f} ms  p99 {level['ttft_ms_p99']:8.1f} ms  "
                f"per-client {level['client_tokens_per_s_median']:8.1f} tok/s  aggregate "
                f"{level['aggregate_tokens_per_s']:8.1f} tok/s  mem update {level['memory_update_ms_median']:7.1f} ms",
                flush=True,
            )
            levels.append(level)
    finally:
        await runner.cleanup()
        reactive.dispose()
    by_n = {lv["clients"]: lv for lv in levels}
    ratio = None
    if 1 in by_n and 32 in by_n:
        ratio = by_n[32]["aggregate_tokens_per_s"] / by_n[1]["aggregate_tokens_per_s"]
        print(f"aggregate throughput 32 sessions / 1 session: {ratio:.1f}x")
    return {
        "benchmark": "serving",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "command": " ".join(["python", *sys.argv]),
        "preset": args.preset,
        "parameters": model.num_parameters(),
        "levels": levels,
        "aggregate_ratio_32_vs_1": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="nano")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: print only)")
    args = parser.parse_args()
    if any(n < 1 or n > 256 for n in args.clients):
        parser.error("--clients values must be within 1..256 (the benchmark targets 127.0.0.1 only)")
    result = asyncio.run(main_async(args))
    if args.out:
        atomic_write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
