"""A paused Redis (SIGSTOP) on a real server: /healthz says degraded, turns fail fast with a `store` error instead
of stalling every session, and the turn number stored agrees with the one sent once Redis is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

from server_helpers import tiny_reactive, turn_done, ws_send, ws_until

from rxnn_runtime.server import create_app
from rxnn_runtime.stores.redis_store import RedisStore


def redis_pid(url: str) -> int:
    port = url.rsplit(":", 1)[1].split("/")[0]
    info = subprocess.run(["redis-cli", "-p", port, "info", "server"], capture_output=True, text=True, check=True)
    return int(info.stdout.split("process_id:")[1].split()[0])


async def ask(ws, session: str, qid: str, n: int = 2) -> list[dict]:
    await ws_send(ws, {"type": "query", "session": session, "id": qid, "text": "hi",
                       "options": {"max_new_tokens": n}})
    return await ws_until(ws, turn_done(qid))


async def test_paused_redis(aiohttp_client, disposable_redis):
    url, _stop = disposable_redis
    pid = redis_pid(url)
    store = RedisStore(url, socket_timeout=0.5, connect_timeout=0.5, retry_after=1.0)
    rm = tiny_reactive(store)
    try:
        client = await aiohttp_client(create_app(rm))
        health = await client.get("/healthz")
        body = await health.json()
        assert health.status == 200 and body["store"]["status"] == "ok" and "latency_ms" in body["store"]
        async with client.ws_connect("/ws") as ws:
            first = await ask(ws, "t", "q1")
            assert first[-1]["type"] == "memory_updated" and first[-1]["turn"] == 1
            os.kill(pid, signal.SIGSTOP)
            try:
                health = await client.get("/healthz")
                body = await health.json()
                assert health.status == 503 and body["status"] == "degraded", body
                start = time.monotonic()
                second = await ask(ws, "t", "q2")
                assert second[-1]["type"] == "error" and second[-1]["code"] == "store", second[-1]
                assert any(f["type"] == "answer" for f in second)  # the answer itself was delivered
                # another session is not stalled for long: the store fails fast while degraded
                other = await ask(ws, "u", "q3")
                assert other[-1]["type"] == "error" and other[-1]["code"] in ("session", "store")  # load or save
                assert time.monotonic() - start < 5.0
            finally:
                os.kill(pid, signal.SIGCONT)
            deadline = time.monotonic() + 10
            while (await client.get("/healthz")).status != 200:
                assert time.monotonic() < deadline, "the store did not come back"
                await asyncio.sleep(0.2)
            third = await ask(ws, "t", "q4")
            assert third[-1]["type"] == "memory_updated"
            sent = third[-1]["turn"]
            assert sent == 3  # turn 2 was sent (and failed to commit): numbers are never reused
        assert rm.wait_idle(10)
        assert store.load("t").turns == sent  # the stored turn number agrees with the one sent
    finally:
        rm.dispose()
        store.close()
