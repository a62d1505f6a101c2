"""Test doubles and raw-socket clients for the server tests (real aiohttp servers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import threading
import time
from types import SimpleNamespace

from reactivex.subject import Subject

from rxnn_runtime.events import QueryAccepted
from rxnn_runtime.messages import Query
from rxnn_runtime.stores import InMemoryStore


def tiny_reactive(store=None, *, max_seq_len: int = 128, **kw):
    """A connected `ReactiveModel` around a tiny RxT with the default tokenizer (dispose it when done)."""
    from rxnn_runtime.reactive_model import ReactiveModel
    from rxt.model import RxT, RxTConfig
    from rxt.tokenizer import RxTokenizer

    tok = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=max_seq_len))
    reactive = ReactiveModel(model, tok, store=store, **kw)
    reactive.connect()
    return reactive


class FloodModel:
    """Stands in for a `ReactiveModel`: every query makes it emit ``frames`` events of ``size`` characters each,
    from a lane thread, one every ``interval`` seconds (a real model never waits on a client either). The pace
    lets the server's sender keep up until the client's socket is full, so it is parked in aiohttp's drain when
    the outbox overflows, as with a real client that stops reading mid-answer."""

    def __init__(self, frames: int = 400, size: int = 64 * 1024, interval: float = 0.002, store=None) -> None:
        self.batches = Subject()  # a ReactiveModel's stream: one tuple of events per lane action
        self.frames, self.size, self.interval = frames, size, interval
        self.store = store or InMemoryStore()
        self.template = SimpleNamespace(query_ids=lambda text: [0] * (2 + len(text) // 4))
        self.model = SimpleNamespace(config=SimpleNamespace(max_seq_len=4096))
        self.submitted: list = []
        self.threads: list[threading.Thread] = []

    def submit(self, message) -> None:
        self.submitted.append(message)
        if isinstance(message, Query):
            thread = threading.Thread(target=self._flood, args=(message,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _flood(self, query: Query) -> None:
        text = "x" * self.size
        for i in range(self.frames):
            self.batches.on_next((QueryAccepted(session_id=query.session_id, turn_id=1, seq=i + 1,
                                                query_id=query.query_id, text=text),))
            time.sleep(self.interval)

    def lane_health(self, timeout: float = 2.0) -> dict:
        return {"alive": True, "latency_ms": 0.0, "queued_turns": 0, "running_turns": 0, "busy_sessions": 0}

    def wait_idle(self, timeout: float = 30.0) -> bool:
        for thread in self.threads:
            thread.join(timeout)
        return True


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client->server websocket frame (clients must mask)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def raw_websocket(port: int, *, rcvbuf: int = 4096, path: str = "/ws",
                        headers: dict[str, str] | None = None) -> tuple[socket.socket, bytes]:
    """A websocket opened over a bare non-blocking socket with a tiny receive buffer; returns (socket, the
    server's handshake response). Nothing reads from it afterwards unless the test does."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 10.0)  # byte by byte: leave frames unread
        if not chunk:
            break
        response += chunk
    return sock, response


async def send_json_frame(sock: socket.socket, frame: dict) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, masked_frame(json.dumps(frame).encode()))


def tcp_states(local_port: int, remote_port: int) -> list[str]:
    """Linux: the TCP states (hex codes from /proc/net/tcp, "01" = ESTABLISHED) of sockets bound to
    ``local_port`` and connected to ``remote_port`` on 127.0.0.1; [] when there is none."""
    states = []
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == remote_port:
                states.append(state)
    return states


TIMEOUT = 20.0


async def ws_send(ws, frame: dict) -> None:
    await ws.send_str(json.dumps(frame))


async def ws_recv(ws, timeout: float = TIMEOUT) -> dict:
    import aiohttp

    msg = await asyncio.wait_for(ws.receive(), timeout)
    if msg.type == aiohttp.WSMsgType.TEXT:
        return json.loads(msg.data)
    if msg.type == aiohttp.WSMsgType.BINARY:
        import msgpack

        return msgpack.unpackb(msg.data, raw=False)
    return {"type": "_closed", "code": msg.data}


async def ws_until(ws, pred, limit: int = 200) -> list[dict]:
    frames = []
    for _ in range(limit):
        frame = await ws_recv(ws)
        frames.append(frame)
        if pred(frame) or frame["type"] == "_closed":
            return frames
    raise AssertionError(f"no matching frame in {frames}")


def turn_done(qid: str):
    return lambda f: f.get("id") == qid and f["type"] in ("memory_updated", "error", "cancelled")
