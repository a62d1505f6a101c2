"""`GET /ws`: the websocket bridge between clients and a `ReactiveModel` (protocol: docs/protocol.md).

    client frame ──► validate ──► reactive.submit(Query | Cancel | Reset)
    reactive.batches (lane thread) ──EventBridge (once per step into the loop, fanned out per session)──►
        session_events(each session this connection queried) ──► bounded outbox ──► send loop ──► client

Frames are msgpack (binary) or JSON (text); replies use the encoding the client used last.

Slow-client policy: the model lane never blocks or waits on a client. Events only cross into the event loop;
token events of one turn are coalesced into one pending frame per (session, turn) until the send loop gets to
it, so a slow client gets fewer, larger token frames. A coalesced frame never crosses a turn and carries the
``seq`` of its first token, the place it holds in the outbox, so ``seq`` strictly increases along the connection. Any other frame takes one outbox slot; when the outbox
holds ``outbox_limit`` frames the client is too far behind: the connection is closed with code 1013 ("try
again later") and an error is logged. Its turns still run to the end and their memory is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from rxnn_runtime.event_bridge import EventBridge
from rxnn_runtime.events import AnswerDone, Event, Token
from rxnn_runtime.messages import MAX_SESSION_ID_LENGTH, Cancel, InvalidMessage, Query, Reset

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
HARD_LIMIT_FACTOR = 16
"""aiohttp's own ``max_msg_size`` is ``HARD_LIMIT_FACTOR * max_message_bytes``: frames between the two limits
get an error frame, frames beyond it close the connection (1009, message too big)."""

MSGPACK = "msgpack"
JSON = "json"


def event_to_frame(event: Event) -> dict[str, Any]:
    """The wire form of a runtime event: ``session``, ``id``, ``turn`` and ``seq`` plus the event's fields."""
    data = event.to_dict()
    frame: dict[str, Any] = {
        "type": data.pop("type"),
        "session": data.pop("session_id"),
        "id": data.pop("query_id"),
        "turn": data.pop("turn_id"),
        "seq": data.pop("seq"),
    }
    frame.update(data)
    return frame


def error_frame(code: str, message: str, *, field: str | None = None, session: Any = None,
                query_id: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if field is not None:
        frame["field"] = field
    if isinstance(session, str):
        frame["session"] = session
    if isinstance(query_id, (str, int)) and not isinstance(query_id, bool):
        frame["id"] = str(query_id)
    return frame


class _TokenBuffer:
    __slots__ = ("index", "query_id", "seq", "session", "text", "token_ids", "turn")

    def __init__(self, event: Token) -> None:
        self.session = event.session_id
        self.query_id = event.query_id
        self.turn = event.turn_id
        self.index = event.index
        self.text: list[str] = []
        self.token_ids: list[int] = []
        self.seq = event.seq

    def add(self, event: Token) -> None:
        # ``seq`` stays the first token's: the frame holds the outbox place of that token, and a later seq here
        # would overtake the frames queued behind it (seq must strictly increase along the connection).
        self.text.append(event.text)
        self.token_ids.append(event.token_id)

    def frame(self) -> dict[str, Any]:
        return {
            "type": "token", "session": self.session, "id": self.query_id, "turn": self.turn, "seq": self.seq,
            "index": self.index, "count": len(self.token_ids), "text": "".join(self.text),
            "token_ids": self.token_ids,
        }


class Connection:
    """One websocket client. Outbox, token buffers and the session set are touched on the event loop only."""

    def __init__(self, ws: web.WebSocketResponse, reactive: Any, loop: asyncio.AbstractEventLoop, *,
                 outbox_limit: int, max_message_bytes: int, peer: str = "",
                 transport: asyncio.Transport | None = None) -> None:
        self.ws = ws
        self.reactive = reactive
        self.loop = loop
        self.outbox_limit = max(1, outbox_limit)
        self.max_message_bytes = max_message_bytes
        self.peer = peer
        self.transport = transport
        self.encoding = MSGPACK
        self.sessions: frozenset[str] = frozenset()  # replaced, never mutated
        self.outbox: deque[Any] = deque()
        self.tokens: dict[tuple[str, int], _TokenBuffer] = {}  # (session, turn) -> the token frame still waiting
        self.closing = False
        self._wake = asyncio.Event()
        self._bridge = EventBridge.of(reactive, loop)
        self._watching: dict[str, Any] = {}  # session -> its subscription on the bridge (loop thread)
        self._sender = loop.create_task(self._send_loop())
        self._closer: asyncio.Task | None = None

    # -- loop side (the bridge delivers here) ---------------------------------------------------------------
    def _unwatch_all(self) -> None:
        watching, self._watching = self._watching, {}
        for subscription in watching.values():
            subscription.dispose()

    def _enqueue_event(self, event: Event) -> None:
        if self.closing:
            return
        if isinstance(event, Token):
            key = (event.session_id, event.turn_id)  # never coalesce across turns, with or without an id
            buffer = self.tokens.get(key)
            if buffer is not None:  # a frame for this turn is still waiting: coalesce into it
                buffer.add(event)
                return
            buffer = _TokenBuffer(event)
            buffer.add(event)
            if self._push(key):
                self.tokens[key] = buffer
            return
        frame = event_to_frame(event)
        if isinstance(event, AnswerDone):
            frame.pop("stopped_by_eos", None)
            frame["finish_reason"] = "stop" if event.stopped_by_eos else "length"
        self._push(frame)

    def send_error(self, code: str, message: str, **kw: Any) -> None:
        self._push(error_frame(code, message, **kw))

    def _push(self, item: Any) -> bool:
        if self.closing:
            return False
        if len(self.outbox) >= self.outbox_limit:
            log.error("websocket client %s is too slow: %d frames waiting (outbox_limit=%d); closing with 1013",
                      self.peer, len(self.outbox), self.outbox_limit)
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow: outbox_limit exceeded")
            return False
        self.outbox.append(item)
        self._wake.set()
        return True

    def _encode(self, frame: dict[str, Any]) -> tuple[bool, Any]:
        if self.encoding == JSON:
            return False, json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        return True, msgpack.packb(frame, use_bin_type=True)

    async def send_frame(self, frame: dict[str, Any]) -> None:
        binary, payload = self._encode(frame)
        if binary:
            await self.ws.send_bytes(payload)
        else:
            await self.ws.send_str(payload)

    async def _send_loop(self) -> None:
        try:
            while not self.closing:
                if not self.outbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = self.outbox.popleft()
                frame = self.tokens.pop(item).frame() if isinstance(item, tuple) else item
                await self.send_frame(frame)
        except (ConnectionError, RuntimeError) as exc:  # the client went away
            log.debug("websocket send to %s stopped: %r", self.peer, exc)
        except asyncio.CancelledError:
            pass

    def close(self, code: int, message: str) -> None:
        """Close from the loop without waiting (idempotent)."""
        if self._closer is None:
            self.closing = True
            self._closer = self.loop.create_task(self._close(code, message))

    async def _close(self, code: int, message: str) -> None:
        self._unwatch_all()
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), timeout=2.0)
        except (TimeoutError, ConnectionError, RuntimeError):
            if self.transport is not None:
                self.transport.abort()

    async def finish(self) -> None:
        """After the receive loop ends: stop listening and sending."""
        self.closing = True
        self._unwatch_all()
        self._sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sender
        if self._closer is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._closer

    # -- client frames --------------------------------------------------------------------------------------
    def handle_raw(self, raw: str | bytes, binary: bool) -> None:
        self.encoding = MSGPACK if binary else JSON
        size = len(raw) if binary else len(raw.encode("utf-8", "surrogatepass"))
        if size > self.max_message_bytes:
            self.send_error("too_large", f"frame is {size} bytes, more than the limit max_message_bytes="
                            f"{self.max_message_bytes}", field="frame")
            return
        try:
            data = msgpack.unpackb(raw, raw=False) if binary else json.loads(raw)
        except Exception as exc:
            kind = "msgpack" if binary else "JSON"
            self.send_error(f"invalid_{kind.lower()}", f"frame is not valid {kind}: {exc}", field="frame")
            return
        if not isinstance(data, dict):
            self.send_error("invalid_message", f"frame must be a map, got {type(data).__name__}", field="frame")
            return
        self.handle_message(data)

    def handle_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        session, query_id = data.get("session"), data.get("id")
        try:
            if kind == "query":
                query = Query.from_dict(data)
                self._watch(query.session_id)
                self.reactive.submit(query)
            elif kind == "cancel":
                self._check_id(query_id)
                message = Cancel(_required(data, "session"), str(query_id) if query_id is not None else "")
                self._watch(message.session_id)
                self.reactive.submit(message)
            elif kind == "reset":
                message = Reset(_required(data, "session"))
                self._watch(message.session_id)
                self.reactive.submit(message)
            elif kind is None:
                raise InvalidMessage("type", "is required (one of query, cancel, reset)")
            else:
                raise InvalidMessage("type", f"{_short(kind)} is unknown (one of query, cancel, reset)")
        except InvalidMessage as exc:
            self.send_error("invalid_message", str(exc), field=exc.field, session=session, query_id=query_id)

    @staticmethod
    def _check_id(query_id: Any) -> None:
        if query_id is None or (isinstance(query_id, int) and not isinstance(query_id, bool)):
            return
        if not isinstance(query_id, str) or len(query_id) > MAX_SESSION_ID_LENGTH:
            raise InvalidMessage("id", f"must be a string of at most {MAX_SESSION_ID_LENGTH} characters")

    def _watch(self, session_id: str) -> None:
        if session_id not in self.sessions:
            self.sessions = self.sessions | {session_id}
        if session_id not in self._watching and not self.closing:
            self._watching[session_id] = self._bridge.session_events(session_id).subscribe(
                on_next=self._enqueue_event)


def _required(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise InvalidMessage(name, "is required")
    return data[name]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    from rxnn_runtime.server.app import CONFIG, CONNECTIONS, REACTIVE

    config = request.app[CONFIG]
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat, max_msg_size=config.max_message_bytes * HARD_LIMIT_FACTOR
    )
    await ws.prepare(request)
    conn = Connection(ws, request.app[REACTIVE], asyncio.get_running_loop(), outbox_limit=config.outbox_limit,
                      max_message_bytes=config.max_message_bytes, peer=str(request.remote), transport=request.transport)
    connections = request.app[CONNECTIONS]
    connections.add(conn)
    try:
        async for msg in ws:
            if conn.closing:
                break
            if msg.type == WSMsgType.BINARY:
                conn.handle_raw(msg.data, binary=True)
            elif msg.type == WSMsgType.TEXT:
                conn.handle_raw(msg.data, binary=False)
            elif msg.type == WSMsgType.ERROR:
                log.debug("websocket %s error: %r", conn.peer, ws.exception())
                break
    finally:
        connections.discard(conn)
        await conn.finish()
        if not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=WSCloseCode.OK), timeout=2.0)
    return ws
