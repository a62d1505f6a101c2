"""Websocket clients of the serving benchmark, run as a process of their own (no torch: starts fast, and never
competes with the server's interpreter for its GIL), as vLLM's serving benchmark runs its clients.

    python benchmarks/serving_clients.py --url ws://127.0.0.1:PORT/ws --sessions bench-64-0 bench-64-1 ... \
        --turns 3 --max-new-tokens 32

Connects every client, prints ``ready``, waits for a line on stdin (the start signal, sent to all client processes
at once), runs the turns and prints one JSON line of measurements: per turn the time to first token, the
answer's token count and decode time, the memory-update time as the server measured it (``update_ms`` of the
memory_updated frame: from the answer's last token on the model lane to the commit) and as this client saw it
(answer frame -> memory_updated frame), and the wall-clock start and end (``time.time()``, comparable across
processes on one machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp

QUESTIONS = ("Hello, how are you today?", "What did you do this weekend?", "Tell me about your favourite book.")


async def _client(ws, session_id: str, turns: int, max_new_tokens: int, out: list) -> None:
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
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"{session_id}: connection closed ({msg.type}, {msg.data})")
            frame = json.loads(msg.data)
            kind = frame.get("type")
            if kind == "token":
                first = first or time.perf_counter()
            elif kind == "answer":
                answered = time.perf_counter()
                tokens = len(frame.get("token_ids", []))
            elif kind == "memory_updated" and answered is not None:
                out.append({
                    "ttft_ms": ((first or answered) - sent) * 1e3,
                    "tokens": tokens,
                    "answer_s": answered - sent,
                    "memory_update_ms": frame.get("update_ms"),  # the server's (None from an older server)
                    "memory_update_client_ms": (time.perf_counter() - answered) * 1e3,
                })
                break
            elif kind == "error":
                raise RuntimeError(f"server error: {frame}")


async def main_async(args: argparse.Namespace) -> dict:
    turns: list = []
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(args.url, max_msg_size=0) for _ in args.sessions]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        start = time.time()
        await asyncio.gather(*(_client(ws, sid, args.turns, args.max_new_tokens, turns)
                               for ws, sid in zip(sockets, args.sessions, strict=True)))
        end = time.time()
        for ws in sockets:
            await ws.close()
    return {"start": start, "end": end, "turns": turns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", nargs="+", required=True)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
