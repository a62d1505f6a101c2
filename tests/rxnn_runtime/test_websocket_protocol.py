"""Protocol promises on a slowly read connection: token frames never cross a turn, ``seq`` strictly increases."""

from __future__ import annotations

import asyncio
import itertools
import random

from rxnn_runtime.events import AnswerDone, MemoryUpdated, Token
from rxnn_runtime.server.websocket import Connection


class _GatedSocket:
    """A websocket whose sends wait until the test opens the gate: a client that reads slowly."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.frames: list[bytes] = []

    async def send_bytes(self, payload: bytes) -> None:
        await self.gate.wait()
        self.frames.append(payload)

    async def send_str(self, payload: str) -> None:
        await self.gate.wait()
        self.frames.append(payload.encode())


class _NoModel:
    """The connection is fed events directly here; nothing comes from a model."""

    class events:
        @staticmethod
        def subscribe(**_kw):
            from reactivex.disposable import Disposable

            return Disposable()


def _connection() -> tuple[Connection, _GatedSocket]:
    ws = _GatedSocket()
    conn = Connection(ws, reactive=_NoModel(), loop=asyncio.get_running_loop(), outbox_limit=1000,
                      max_message_bytes=1 << 20)
    conn.encoding = "json"
    return conn, ws


async def _drain(conn: Connection, ws: _GatedSocket, expected: int) -> list[dict]:
    import json

    ws.gate.set()
    for _ in range(200):
        if len(ws.frames) >= expected and not conn.outbox:
            break
        await asyncio.sleep(0.01)
    await conn.finish()
    return [json.loads(f) for f in ws.frames]


def _turn(seq: int, session: str, turn: int, text: str) -> list:
    events = [Token(session, turn, seq + i, "", index=i, token_id=100 + i, text=c) for i, c in enumerate(text)]
    events.append(AnswerDone(session, turn, seq + len(text), "", text=text, token_ids=tuple(range(len(text)))))
    return events


async def test_token_frames_never_cross_a_turn_without_ids():
    conn, ws = _connection()
    # Two queued turns of one session, no ids, read slowly: every event arrives before any frame is sent.
    events = _turn(1, "s", 1, "ab") + _turn(10, "s", 2, "xyz")
    for event in events:
        conn._enqueue_event(event)
    frames = await _drain(conn, ws, expected=4)
    assert [(f["type"], f["turn"]) for f in frames] == [("token", 1), ("answer", 1), ("token", 2), ("answer", 2)]
    for turn, text in ((1, "ab"), (2, "xyz")):
        tokens = [f for f in frames if f["type"] == "token" and f["turn"] == turn]
        answer = next(f for f in frames if f["type"] == "answer" and f["turn"] == turn)
        assert "".join(f["text"] for f in tokens) + answer.get("tail", "") == answer["text"] == text


async def test_seq_strictly_increases_along_a_slow_connection():
    conn, ws = _connection()
    rng = random.Random(0)
    seq = 0
    sent = 0
    for _ in range(300):  # three sessions interleaved, as a batched step delivers them
        session = rng.choice("abc")
        seq += 1
        conn._enqueue_event(Token(session, 1, seq, "", index=seq, token_id=seq, text="t"))
        sent += 1
        if rng.random() < 0.05:
            seq += 1
            conn._enqueue_event(MemoryUpdated(session, 0, seq, "", version=1))
    frames = await _drain(conn, ws, expected=1)
    seqs = [f["seq"] for f in frames]
    assert len(frames) < sent  # tokens were coalesced ...
    assert all(a < b for a, b in itertools.pairwise(seqs)), seqs  # ... and seq never went backwards
    assert sum(f.get("count", 0) for f in frames) == sent  # ... and none was lost
