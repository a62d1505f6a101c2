"""/healthz tells whether the model's lane still runs actions, and how deep its queues are."""

from __future__ import annotations

import asyncio
import threading

from server_helpers import tiny_reactive

from rxnn_runtime.server import create_app
from rxnn_runtime.stores import InMemoryStore


async def test_healthz_reports_the_lane_and_degrades_when_it_is_stuck(aiohttp_client):
    rm = tiny_reactive(InMemoryStore())
    release = threading.Event()
    try:
        client = await aiohttp_client(create_app(rm))
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 200 and body["status"] == "ok"
        lane = body["lane"]
        assert lane["alive"] is True and lane["latency_ms"] >= 0
        assert lane["queued_turns"] == lane["running_turns"] == lane["busy_sessions"] == 0

        rm._schedule(lambda: release.wait(10))  # one action that never yields: the lane is stuck behind it
        response = await client.get("/healthz")
        body = await response.json()
        assert response.status == 503 and body["status"] == "degraded"
        assert body["lane"]["alive"] is False
        assert "within" in body["lane"]["error"]
    finally:
        release.set()
        await asyncio.sleep(0)
        rm.dispose()


def test_lane_health_counts_are_read_on_the_lane():
    rm = tiny_reactive(InMemoryStore())
    try:
        health = rm.lane_health(timeout=5.0)
        assert health["alive"] and set(health) >= {"latency_ms", "queued_turns", "running_turns", "busy_sessions"}
    finally:
        rm.dispose()
    assert rm.lane_health(timeout=0.5) == {"alive": False, "error": "the model is disposed"}
