"""The websocket bridge against a real aiohttp server on 127.0.0.1 and real clients."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import msgpack
import pytest

from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.server import create_app
from rxt.model import RxT, RxTConfig
from rxt.tokenizer import RxTokenizer

TIMEOUT = 20.0


@pytest.fixture(scope="module")
def reactive():
    tok = RxTokenizer.default()
    torch_model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    rm = ReactiveModel(torch_model, tok, max_pending_per_session=2)
    rm.connect()
    yield rm
    rm.wait_idle(10)
    rm.dispose()


@pytest.fixture
def make_client(aiohttp_client, reactive):
    async def make(**kw):
        return await aiohttp_client(create_app(reactive, **kw))

    return make


async def send(ws, frame, *, as_json=False):
    if as_json:
        await ws.send_str(json.dumps(frame))
    else:
        await ws.send_bytes(msgpack.packb(frame, use_bin_type=True))


async def recv(ws, timeout=TIMEOUT):
    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return "msgpack", msgpack.unpackb(msg.data, raw=False)
    if msg.type == aiohttp.WSMsgType.TEXT:
        return "json", json.loads(msg.data)
    return "close", {"type": "_closed", "code": msg.data, "ws_type": msg.type}


async def recv_until(ws, pred, *, limit=200):
    frames = []
    for _ in range(limit):
        _, frame = await recv(ws)
        frames.append(frame)
        if pred(frame):
            return frames
        assert frame["type"] != "_closed", frames
    raise AssertionError(f"no matching frame in {frames}")


def memory_updated(qid):
    return lambda f: f["type"] in ("memory_updated", "error", "cancelled") and f.get("id") == qid


async def ask(ws, session, qid, text="hello", *, as_json=False, n=6):
    await send(ws, {"type": "query", "session": session, "id": qid, "text": text,
                    "options": {"max_new_tokens": n}}, as_json=as_json)
    return await recv_until(ws, memory_updated(qid))


@pytest.mark.parametrize("as_json", [False, True])
async def test_query_streams_tokens_answer_memory(make_client, as_json):
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        frames = await ask(ws, f"s-{as_json}", "q1", as_json=as_json)
        types = [f["type"] for f in frames]
        assert types[0] == "query_accepted"
        answer_at = types.index("answer")
        assert types[-1] == "memory_updated" and frames[-1]["version"] >= 1
        # the server's own time from the answer's end to the commit (docs/protocol.md)
        assert isinstance(frames[-1]["update_ms"], float) and 0 <= frames[-1]["update_ms"] < 60_000
        assert "memory_update_started" in types[answer_at:]
        tokens = [f for f in frames[:answer_at] if f["type"] == "token"]
        assert tokens, frames
        answer = frames[answer_at]
        streamed = "".join(t["text"] for t in tokens)
        # Token text is "" inside a multi-byte character; the answer's tail carries a trailing partial one.
        assert streamed + answer["tail"] == answer["text"]
        assert [i for t in tokens for i in t["token_ids"]] == answer["token_ids"]
        assert sum(t["count"] for t in tokens) == len(answer["token_ids"]) <= 6
        assert all(f["session"] == f"s-{as_json}" and f["id"] == "q1" for f in frames)
        assert answer["finish_reason"] in ("stop", "length")
        # the reply encoding follows the client's
        await send(ws, {"type": "nope"}, as_json=as_json)
        encoding, frame = await recv(ws)
        assert encoding == ("json" if as_json else "msgpack") and frame["code"] == "invalid_message"


@pytest.mark.parametrize("as_json", [False, True])
async def test_ids_are_echoed_as_sent_in_every_frame(make_client, as_json):
    """An integer id stays an integer and a string id a string, in every frame of the turn (both encodings),
    even when the two ids look alike and their turns are queued together in one session."""
    client = await make_client()
    session = f"ids-{as_json}"
    big, small = 2**63 - 1, -(2**63)
    async with client.ws_connect("/ws") as ws:
        for qid in (7, "7"):
            await send(ws, {"type": "query", "session": session, "id": qid, "text": "hello",
                            "options": {"max_new_tokens": 4}}, as_json=as_json)
        frames = await recv_until(ws, memory_updated("7"))
        for qid in (7, "7"):
            mine = [f for f in frames if f["id"] == qid and type(f["id"]) is type(qid)]
            assert mine[0]["type"] == "query_accepted" and mine[-1]["type"] == "memory_updated", frames
        assert all(f["id"] in (7, "7") for f in frames)
        assert len({f["turn"] for f in frames if f["id"] == 7 and type(f["id"]) is int}) == 1
        for qid in (big, small, 0):
            frames = await ask(ws, session, qid, as_json=as_json, n=3)
            assert all(type(f["id"]) is int and f["id"] == qid for f in frames), frames
        # a bad frame with an integer id: the error frame echoes it as an integer too
        await send(ws, {"type": "query", "session": session, "id": 12, "text": 5}, as_json=as_json)
        _, frame = await recv(ws)
        assert (frame["type"], frame["field"], frame["id"]) == ("error", "text", 12) and type(frame["id"]) is int


async def test_cancel_by_integer_id_matches_that_id_only(make_client):
    """Cancel {"id": 0} cancels the query whose id is the integer 0: not "every turn" (as "" would) and not "0"."""
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        session = "cancel-int"
        await send(ws, {"type": "query", "session": session, "id": "first", "text": "hello",
                        "options": {"max_new_tokens": 40}})
        # Running before the next two arrive: queries that reach the lane together wait together, and three
        # waiting would be over the fixture's max_pending_per_session=2.
        frames = await recv_until(ws, lambda f: f["type"] in ("token", "answer") and f["id"] == "first")
        await send(ws, {"type": "query", "session": session, "id": "0", "text": "hello",
                        "options": {"max_new_tokens": 4}})
        await send(ws, {"type": "query", "session": session, "id": 0, "text": "hello",
                        "options": {"max_new_tokens": 4}})
        await send(ws, {"type": "cancel", "session": session, "id": 0})
        frames += await recv_until(ws, memory_updated("0"))
        cancelled = [f for f in frames if f["type"] == "cancelled"]
        assert [(f["id"], type(f["id"])) for f in cancelled] == [(0, int)], frames
        assert any(f["type"] == "memory_updated" and f["id"] == "first" for f in frames), frames


async def test_encoding_follows_last_frame(make_client):
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        await ws.send_str("{}")
        assert (await recv(ws))[0] == "json"
        await ws.send_bytes(msgpack.packb({}))
        assert (await recv(ws))[0] == "msgpack"


BAD_FRAMES = [
    # (raw frame, binary, expected code, expected field)
    (b"\xc1\xc1", True, "invalid_msgpack", "frame"),
    ("{not json", False, "invalid_json", "frame"),
    (msgpack.packb([1, 2, 3]), True, "invalid_message", "frame"),
    ("42", False, "invalid_message", "frame"),
    (msgpack.packb({"session": "x"}), True, "invalid_message", "type"),
    (msgpack.packb({"type": "fly", "session": "x"}), True, "invalid_message", "type"),
    (msgpack.packb({"type": "query", "text": "hi"}), True, "invalid_message", "session"),
    (msgpack.packb({"type": "query", "session": "x"}), True, "invalid_message", "text"),
    (msgpack.packb({"type": "query", "session": 5, "text": "hi"}), True, "invalid_message", "session"),
    (msgpack.packb({"type": "query", "session": "x", "text": 7}), True, "invalid_message", "text"),
    (msgpack.packb({"type": "query", "session": "x", "text": "hi", "id": [1]}), True, "invalid_message", "id"),
    (msgpack.packb({"type": "query", "session": "x", "text": "hi", "options": {"max_new_tokens": "9"}}), True,
     "invalid_message", "options.max_new_tokens"),
    (msgpack.packb({"type": "query", "session": "x", "text": "hi", "options": {"max_new_tokens": 10**6}}), True,
     "invalid_message", "options.max_new_tokens"),
    (msgpack.packb({"type": "query", "session": "x", "text": "hi", "options": []}), True, "invalid_message",
     "options"),
    (msgpack.packb({"type": "query", "session": "x", "text": "a" * 9000}), True, "invalid_message", "text"),
    (json.dumps({"type": "query", "session": "bad id!", "text": "hi"}), False, "invalid_message", "session"),
    (json.dumps({"type": "cancel"}), False, "invalid_message", "session"),
    (json.dumps({"type": "cancel", "session": "x", "id": {"a": 1}}), False, "invalid_message", "id"),
    (json.dumps({"type": "reset", "session": ""}), False, "invalid_message", "session"),
    (json.dumps({"type": "query", "session": "x", "text": "hi", "id": True}), False, "invalid_message", "id"),
    (json.dumps({"type": "query", "session": "x", "text": "hi", "id": 2**63}), False, "invalid_message", "id"),
    (msgpack.packb({"type": "query", "session": "x", "text": "hi", "id": 2**64 - 1}), True, "invalid_message",
     "id"),
    (json.dumps({"type": "query", "session": "x", "text": "hi", "id": -(2**63) - 1}), False, "invalid_message",
     "id"),
    (json.dumps({"type": "query", "session": "x", "text": "hi", "id": 10**30}), False, "invalid_message", "id"),
    (json.dumps({"type": "cancel", "session": "x", "id": 2**64}), False, "invalid_message", "id"),
]


async def test_bad_frames_get_error_frames_and_connection_lives(make_client):
    client = await make_client(max_message_bytes=16 * 1024)
    async with client.ws_connect("/ws") as ws, client.ws_connect("/ws") as other:
        for raw, binary, code, field in BAD_FRAMES:
            if binary:
                await ws.send_bytes(raw)
            else:
                await ws.send_str(raw)
            _, frame = await recv(ws)
            assert frame["type"] == "error", (raw[:60], frame)
            assert (frame["code"], frame["field"]) == (code, field), (raw[:60], frame)
            assert frame["message"]
        # the oversize text error names the limit
        await send(ws, {"type": "query", "session": "x", "text": "a" * 9000})
        _, frame = await recv(ws)
        assert "8000" in frame["message"] and frame["session"] == "x"
        # oversize frame: error naming max_message_bytes, not a 1009 close
        await send(ws, {"type": "query", "session": "x", "text": "a" * 20_000})
        _, frame = await recv(ws)
        assert (frame["code"], frame["field"]) == ("too_large", "frame")
        assert "max_message_bytes=16384" in frame["message"]
        # the same connection and another client's session still work
        results = await asyncio.gather(ask(ws, "bad-1", "ok1"), ask(other, "bad-2", "ok2"))
        for frames in results:
            assert frames[-1]["type"] == "memory_updated"


async def test_queue_full_is_forwarded(make_client):
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        for i in range(8):
            await send(ws, {"type": "query", "session": "flood", "id": f"f{i}", "text": "hi",
                            "options": {"max_new_tokens": 2}})
        frames = await recv_until(ws, lambda f: f["type"] == "error" and f["code"] == "queue_full")
        assert frames[-1]["session"] == "flood" and "max_pending_per_session" in frames[-1]["message"]
        # accepted ones still complete
        accepted = {f["id"] for f in frames if f["type"] == "query_accepted"}
        assert accepted
        done: set[str] = set()
        for _ in range(300):
            if accepted <= done:
                break
            _, f = await recv(ws)
            if f["type"] == "query_accepted":
                accepted.add(f["id"])
            if f["type"] == "memory_updated":
                done.add(f["id"])
        assert accepted <= done


async def test_cancel_and_reset(make_client):
    client = await make_client()
    async with client.ws_connect("/ws") as ws:
        await ask(ws, "cr", "a1", as_json=True)
        await send(ws, {"type": "reset", "session": "cr"}, as_json=True)
        frames = await recv_until(ws, lambda f: f["type"] == "memory_updated")
        assert frames[-1]["version"] == 0 and frames[-1]["update_ms"] >= 0
        await send(ws, {"type": "query", "session": "cr", "id": "c1", "text": "hi",
                        "options": {"max_new_tokens": 64}}, as_json=True)
        await send(ws, {"type": "cancel", "session": "cr", "id": "c1"}, as_json=True)
        frames = await recv_until(ws, memory_updated("c1"))
        assert frames[-1]["type"] in ("cancelled", "memory_updated")  # it may have finished first


async def test_slow_client_closed_1013_without_stalling_others(make_client, caplog):
    client = await make_client(outbox_limit=2)
    app = client.server.app
    from rxnn_runtime.server.app import CONNECTIONS

    async with client.ws_connect("/ws") as slow:
        # The slow client's network is stuck: the server's sends never complete, and it does not read.
        for _ in range(50):
            if app[CONNECTIONS]:
                break
            await asyncio.sleep(0.01)
        (conn,) = app[CONNECTIONS]
        stuck = asyncio.Event()

        async def never_completes(frame):
            await stuck.wait()

        conn.send_frame = never_completes
        conn.can_write_now = lambda: False  # nor does the transport take frames at once
        async with client.ws_connect("/ws") as fast:
            # A burst of one turn's frames can exceed a 2-frame outbox even for a fast reader; give the healthy
            # client a normal outbox so only the stuck one is dropped.
            for _ in range(50):
                others = [c for c in app[CONNECTIONS] if c is not conn]
                if others:
                    break
                await asyncio.sleep(0.01)
            others[0].outbox_limit = 256
            await send(slow, {"type": "query", "session": "slow", "id": "s1", "text": "hi",
                              "options": {"max_new_tokens": 8}})
            fast_frames = await ask(fast, "fast", "f1")
            assert fast_frames[-1]["type"] == "memory_updated"
            msg = await asyncio.wait_for(slow.receive(), TIMEOUT)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013, msg
            # the fast client keeps working after the slow one is gone
            assert (await ask(fast, "fast", "f2"))[-1]["type"] == "memory_updated"
    assert any("too slow" in r.getMessage() for r in caplog.records)
    assert client.server.app[CONNECTIONS] == set() or all(c.closing for c in app[CONNECTIONS])


async def test_healthz_and_index(make_client):
    client = await make_client()
    resp = await client.get("/healthz")
    assert resp.status == 200 and (await resp.json())["status"] == "ok"
    resp = await client.get("/")
    assert resp.status in (200, 404)


async def test_shutdown_closes_websockets_1001(reactive, aiohttp_server):
    server = await aiohttp_server(create_app(reactive))
    async with aiohttp.ClientSession() as session, session.ws_connect(server.make_url("/ws")) as ws:
        await send(ws, {"type": "query", "session": "down", "id": "d1", "text": "hi",
                        "options": {"max_new_tokens": 4}})
        await recv(ws)  # accepted: the turn is under way
        closing = asyncio.create_task(server.close())
        frames = await recv_until(ws, lambda f: f["type"] == "_closed", limit=50)
        assert frames[-1]["code"] == 1001
        await asyncio.wait_for(closing, TIMEOUT)
    assert reactive.wait_idle(5)
    state = reactive.session_state("down")
    assert state is not None and state.turns >= 1
