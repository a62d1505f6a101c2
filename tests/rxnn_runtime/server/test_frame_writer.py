"""Frames written straight onto the transport: RFC 6455 framing, one write per drain, seq order kept across the
direct path and the send loop, and the send loop taking over while the transport is behind."""

from __future__ import annotations

import asyncio
import itertools
import json
import struct

import aiohttp
import msgpack
import pytest
from aiohttp import web

from rxnn_runtime.events import AnswerDone, MemoryUpdated, QueryAccepted, Token
from rxnn_runtime.server import frame_writer
from rxnn_runtime.server.websocket import Connection


def parse_frames(wire: bytes) -> list[tuple[int, bytes]]:
    """An independent RFC 6455 reader of unmasked server frames: [(opcode, payload)]."""
    frames, at = [], 0
    while at < len(wire):
        first, second = wire[at], wire[at + 1]
        assert first & 0x80 and not first & 0x70, "FIN set, no RSV bits (uncompressed)"
        assert not second & 0x80, "a server never masks"
        length, at = second & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack_from("!H", wire, at), at + 2
        elif length == 127:
            (length,), at = struct.unpack_from("!Q", wire, at), at + 8
        frames.append((first & 0x0F, wire[at : at + length]))
        at += length
    return frames


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frame_header_lengths(length):
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    wire = frame_writer.frame_header(length, frame_writer.OPCODE_BINARY) + payload
    assert parse_frames(wire) == [(frame_writer.OPCODE_BINARY, payload)]


def test_encoders_equal_the_library_calls():
    frame = {"type": "token", "session": "s", "id": 7, "turn": 1, "seq": 3, "text": "é ✓", "token_ids": [1, 2]}
    assert frame_writer.encode_json(frame) == json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
    assert frame_writer.encode_msgpack(frame) == msgpack.packb(frame, use_bin_type=True)
    assert frame_writer.encode_msgpack(frame) == msgpack.packb(frame, use_bin_type=True)  # the packer resets


class _Transport:
    """Records writes on a shared wire; ``backlog`` stands for bytes the kernel has not taken yet."""

    def __init__(self, wire: list) -> None:
        self.wire, self.writes, self.backlog = wire, 0, 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.wire.extend(json.loads(p) for _, p in parse_frames(data))

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 16 * 1024, 64 * 1024


class _Socket:
    """aiohttp's side of the connection: the send loop's path, onto the same wire."""

    closed, compress = False, 0

    def __init__(self, wire: list) -> None:
        self.wire = wire

    async def send_str(self, payload: str) -> None:
        self.wire.append(json.loads(payload))


class _NoModel:
    pass


def _connection() -> tuple[Connection, _Transport, list]:
    wire: list = []
    transport = _Transport(wire)
    conn = Connection(_Socket(wire), _NoModel(), asyncio.get_running_loop(), outbox_limit=1000,
                      max_message_bytes=1 << 20, transport=transport)
    conn.encoding = "json"
    return conn, transport, wire


def _drain_events(seq: itertools.count) -> list:
    """Two sessions of one connection, interleaved as a batched step emits them; session a ends turn 1 and its
    turn 2 starts in the same drain."""
    events = []
    for i in range(3):
        events.append(Token("a", 1, next(seq), "", index=i, token_id=10 + i, text=f"a{i}"))
        events.append(Token("b", 5, next(seq), "", index=i, token_id=20 + i, text=f"b{i}"))
    events.append(AnswerDone("a", 1, next(seq), "", text="a0a1a2", token_ids=(10, 11, 12)))
    events.append(QueryAccepted("a", 2, next(seq), "", text="again"))
    events.append(Token("a", 2, next(seq), "", index=0, token_id=30, text="x"))
    events.append(MemoryUpdated("b", 4, next(seq), "", version=4))
    return events


async def test_a_drain_is_one_write_with_one_token_frame_per_turn_in_seq_order():
    conn, transport, wire = _connection()
    try:
        conn._on_events(_drain_events(itertools.count(1)))
        assert transport.writes == 1 and not conn.outbox
        assert [(f["type"], f["session"], f["turn"]) for f in wire] == [
            ("token", "a", 1), ("token", "b", 5), ("answer", "a", 1), ("query_accepted", "a", 2),
            ("token", "a", 2), ("memory_updated", "b", 4)]
        assert [f["count"] for f in wire if f["type"] == "token"] == [3, 3, 1]
        assert [f["text"] for f in wire if f["type"] == "token"] == ["a0a1a2", "b0b1b2", "x"]
        assert all(a["seq"] < b["seq"] for a, b in itertools.pairwise(wire))
    finally:
        await conn.finish()


async def test_the_send_loop_takes_over_while_the_transport_is_behind_and_order_holds():
    conn, transport, wire = _connection()
    seq = itertools.count(1)
    try:
        conn._on_events(_drain_events(seq))  # direct
        transport.backlog = 1 << 20  # the client stopped reading: over the high-water mark
        conn._on_events(_drain_events(seq))
        assert transport.writes == 1 and conn.outbox  # queued for the send loop, not written
        for _ in range(100):
            if not conn.outbox:
                break
            await asyncio.sleep(0.01)
        transport.backlog = 0
        conn._on_events(_drain_events(seq))  # direct again
        assert transport.writes == 2
        assert len(wire) == 18 and all(a["seq"] < b["seq"] for a, b in itertools.pairwise(wire))
        assert sum(f.get("count", 0) for f in wire) == 21  # no token lost
    finally:
        await conn.finish()


async def test_frames_of_every_length_reach_a_real_aiohttp_client(aiohttp_client):
    """The direct path's frames through a real socket, read by aiohttp's own client (lengths across the 7-bit,
    16-bit and 64-bit length encodings), text and binary."""
    conns: list[Connection] = []
    done = asyncio.Event()

    async def handler(request):
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)
        conn = Connection(ws, _NoModel(), asyncio.get_running_loop(), outbox_limit=100,
                          max_message_bytes=1 << 20, transport=request.transport)
        conns.append(conn)
        await done.wait()
        await conn.finish()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    client = await aiohttp_client(app)
    sizes = [1, 100, 200, 70000]
    async with client.ws_connect("/ws", max_msg_size=0) as ws:
        while not conns:
            await asyncio.sleep(0.01)
        (conn,) = conns
        assert conn.can_write_now()
        for encoding, kind in (("json", aiohttp.WSMsgType.TEXT), ("msgpack", aiohttp.WSMsgType.BINARY)):
            conn.encoding = encoding
            for n in sizes:
                conn.send_error("probe", "é" * n)
            for n in sizes:
                msg = await asyncio.wait_for(ws.receive(), 10)
                assert msg.type == kind
                frame = json.loads(msg.data) if kind == aiohttp.WSMsgType.TEXT else msgpack.unpackb(msg.data)
                assert frame == {"type": "error", "code": "probe", "message": "é" * n}
        done.set()
