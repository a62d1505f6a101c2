"""A stream of session-less OpenAI requests leaves memory flat: every one creates a session, none is kept forever."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server import create_app
from rxnn_runtime.stores import InMemoryStore, Retention
from rxt.model import RxT, RxTConfig
from rxt.tokenizer import RxTokenizer

REQUESTS = 2000
WARMUP = 300
STM_SLOTS, DIM = 256, 128  # 2 layers x 256 slots x 128 dims x 4 bytes = 256 KiB of STM per session


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS (Linux)")
async def test_session_less_requests_keep_memory_flat(aiohttp_client):
    tok = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64, stm_slots=STM_SLOTS, dim=DIM))
    store = InMemoryStore(Retention(max_sessions=64))
    rm = ReactiveModel(model, tok, store=store, session_cache_size=16)
    rm.connect()
    try:
        client = await aiohttp_client(create_app(rm))
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        sem = asyncio.Semaphore(8)

        async def one(i: int) -> None:
            async with sem:
                resp = await client.post("/v1/chat/completions", json=body)
                assert resp.status == 200, await resp.text()
                await resp.read()

        await asyncio.gather(*(one(i) for i in range(WARMUP)))
        assert rm.wait_idle(30)
        gc.collect()
        before = rss_mib()
        await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        assert rm.wait_idle(30)
        gc.collect()
        growth = rss_mib() - before
        print(f"RSS {before:.0f} MiB -> {before + growth:.0f} MiB over {REQUESTS} requests; store holds {store.count()}")
        # Unbounded, the store alone would grow by REQUESTS x 256 KiB = 500 MiB.
        assert growth < 100, f"RSS grew by {growth:.0f} MiB over {REQUESTS} session-less requests"
        assert store.count() <= 64
    finally:
        rm.dispose()
