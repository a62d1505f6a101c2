"""The websocket server and /healthz over an `EngineProcess` (the lane in a child process), as over a ReactiveModel."""

from __future__ import annotations

from server_helpers import turn_done, ws_send, ws_until

from rxnn_runtime.cli import load_parts
from rxnn_runtime.engine_process import EngineProcess, EngineSpec
from rxnn_runtime.server import create_app
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer


async def test_a_turn_over_websockets_with_the_lane_in_a_child_process(aiohttp_client, tmp_path):
    tokenizer = RxTokenizer.default()
    RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128)).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    engine = EngineProcess(EngineSpec(load_parts, (str(tmp_path / "m"), "cpu")))
    engine.connect()
    try:
        client = await aiohttp_client(create_app(engine))
        health = await client.get("/healthz")
        body = await health.json()
        assert health.status == 200 and body["lane"]["alive"] is True and body["store"]["status"] == "ok"
        ws = await client.ws_connect("/ws")
        await ws_send(ws, {"type": "query", "session": "s1", "id": 7, "text": "hello", "max_new_tokens": 5})
        frames = await ws_until(ws, turn_done(7))
        kinds = [f["type"] for f in frames]
        assert kinds[0] == "query_accepted" and kinds[-1] == "memory_updated" and "answer" in kinds, kinds
        answer = next(f for f in frames if f["type"] == "answer")
        streamed = [t for f in frames if f["type"] == "token" for t in f["token_ids"]]
        assert answer["id"] == 7 and answer["session"] == "s1" and streamed == answer["token_ids"]
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # strictly increasing across the crossing
        await ws.close()
    finally:
        engine.dispose()
