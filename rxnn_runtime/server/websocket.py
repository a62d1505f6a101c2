"""`GET /ws`: the websocket bridge between clients and a `ReactiveModel` (protocol: docs/protocol.md).

    client frame ──► validate ──► reactive.submit(Query | Cancel | Reset)
    reactive.batches (lane thread) ──EventBridge (once per step into the loop, fanned out per session)──►
        one list per drain for all sessions this connection owns ──► bounded outbox ──► client: written at once,
        one transport write per drain (`frame_writer`), or by the send loop while the transport is behind

Frames are msgpack (binary) or JSON (text); replies use the encoding the client used last.

Slow-client policy: the model lane never blocks or waits on a client. Events only cross into the event loop;
token events of one turn are coalesced into one pending frame per (session, turn) until it is sent, so a drain
gives a turn one token frame however many steps it covers, and a slow client gets fewer, larger token frames.
While the transport takes frames at once (its buffer below the high-water mark), a drain's frames are written
straight away; otherwise they wait in the outbox for the send loop, which awaits aiohttp's flow control. A coalesced frame never crosses a turn and carries the
``seq`` of its first token, the place it holds in the outbox, so ``seq`` strictly increases along the
connection. Any other frame takes one outbox slot; when the outbox holds ``outbox_limit`` frames the client is too far behind: the connection is closed with code 1013 ("try
again later") and an error is logged. A client that stops reading cannot take the close frame either: if the
close handshake does not finish within ``CLOSE_TIMEOUT`` the transport is aborted, whatever the close raised.
Its turns still run to the end and their memory is committed.

Access (see `security.py`): with an API key the connection must authenticate (header, ``api_key`` query
parameter or a first ``auth`` frame); a connection acts on and hears only the sessions it owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections import deque
from typing import Any

import msgpack
from aiohttp import WSCloseCode, WSMsgType, web

from rxnn_runtime.event_bridge import EventBridge
from rxnn_runtime.events import AnswerDone, Event, Token
from rxnn_runtime.messages import Cancel, InvalidMessage, Query, Reset, check_query_id
from rxnn_runtime.server import frame_writer
from rxnn_runtime.server.security import (
    AUTH_FRAME,
    AUTH_TIMEOUT,
    CLOSE_POLICY_VIOLATION,
    AccessPolicy,
    SessionOwners,
    forbidden_message,
)
from rxnn_runtime.server.validation import TooDeep, TooLong, check_depth, check_room, decode_json

log = logging.getLogger(__name__)

CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_TIMEOUT = 2.0  # seconds the close handshake may take before the transport is aborted
HARD_LIMIT_FACTOR = 16
"""aiohttp's own ``max_msg_size`` is ``HARD_LIMIT_FACTOR * max_message_bytes``: frames between the two limits
get an error frame, frames beyond it close the connection (1009, message too big)."""

MSGPACK = "msgpack"
JSON = "json"


_IDENTITY = ("session_id", "turn_id", "seq", "query_id")


@functools.cache
def _own_fields(cls: type[Event]) -> tuple[str, ...]:
    """The fields an event class adds to the identity ones, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in _IDENTITY)


def event_to_frame(event: Event) -> dict[str, Any]:
    """The wire form of a runtime event: ``session``, ``id``, ``turn`` and ``seq`` plus the event's fields
    (tuples as lists). Built field by field: the loop pays this for every frame it sends."""
    frame: dict[str, Any] = {"type": event.type, "session": event.session_id, "id": event.query_id,
                             "turn": event.turn_id, "seq": event.seq}
    for name in _own_fields(type(event)):
        value = getattr(event, name)
        frame[name] = list(value) if isinstance(value, tuple) else value
    return frame


def error_frame(code: str, message: str, *, field: str | None = None, session: Any = None,
                query_id: Any = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if field is not None:
        frame["field"] = field
    if isinstance(session, str):
        frame["session"] = session
    try:  # echoed as sent, when it is a valid id (an int beyond 64 bits could not even be packed)
        frame["id"] = check_query_id(query_id)
    except InvalidMessage:
        pass
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


class Forbidden(InvalidMessage):
    """A frame names a session the connection may not use (owned by another client, or over its limit)."""


class Connection:
    """One websocket client. Outbox, token buffers and the session set are touched on the event loop only."""

    def __init__(self, ws: web.WebSocketResponse, reactive: Any, loop: asyncio.AbstractEventLoop, *,
                 outbox_limit: int, max_message_bytes: int, peer: str = "",
                 transport: asyncio.Transport | None = None, owners: SessionOwners | None = None,
                 max_sessions: int = 256, access: AccessPolicy | None = None, authenticated: bool = True) -> None:
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
        self.owners = owners if owners is not None else SessionOwners()
        self.max_sessions = max_sessions
        self.access = access or AccessPolicy()
        self.authenticated = authenticated
        self._wake = asyncio.Event()
        self._bridge = EventBridge.of(reactive, loop)
        self._watching: dict[str, Any] = {}  # session -> its subscription on the bridge (loop thread)
        self._sending = False  # the send loop holds a frame it has not finished sending
        self._sender = loop.create_task(self._send_loop())
        self._closer: asyncio.Task | None = None

    # -- loop side (the bridge delivers here) ---------------------------------------------------------------
    def _unwatch_all(self) -> None:
        watching, self._watching = self._watching, {}
        for subscription in watching.values():
            subscription.dispose()

    def _on_events(self, events: list[Event]) -> None:
        """One drain's events of the sessions this connection owns, in ``seq`` order: queued (tokens coalesced per
        turn), then written at once when the transport can take them."""
        if self.closing:
            return
        tokens = self.tokens
        for event in events:
            if isinstance(event, Token):  # most events: inline, a token joins its turn's waiting frame
                buffer = tokens.get((event.session_id, event.turn_id))
                if buffer is not None:
                    buffer.add(event)
                    continue
            self._queue_event(event)
        self._kick()

    def _enqueue_event(self, event: Event) -> None:
        self._on_events([event])

    def _queue_event(self, event: Event) -> None:
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
            if self._append(key):
                self.tokens[key] = buffer
            return
        frame = event_to_frame(event)
        if isinstance(event, AnswerDone):
            frame.pop("stopped_by_eos", None)
            frame["finish_reason"] = "stop" if event.stopped_by_eos else "length"
        self._append(frame)

    def send_error(self, code: str, message: str, **kw: Any) -> None:
        self._push(error_frame(code, message, **kw))

    def _push(self, item: Any) -> bool:
        """Queue one frame and send it (at once, or through the send loop)."""
        if not self._append(item):
            return False
        self._kick()
        return True

    def _append(self, item: Any) -> bool:
        if self.closing:
            return False
        if len(self.outbox) >= self.outbox_limit:
            log.error("websocket client %s is too slow: %d frames waiting (outbox_limit=%d); closing with 1013",
                      self.peer, len(self.outbox), self.outbox_limit)
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow: outbox_limit exceeded")
            return False
        self.outbox.append(item)
        return True

    def _kick(self) -> None:
        """Write what waits now if the transport takes it at once and the send loop holds nothing (frames stay in
        order); else wake the send loop."""
        if not self.outbox or self.closing:
            return
        if not self._sending and self.can_write_now():
            self._write_now()
        else:
            self._wake.set()

    def can_write_now(self) -> bool:
        return frame_writer.can_write_now(self.ws, self.transport)

    def _write_now(self) -> None:
        """Every frame in the outbox, encoded, in one transport write."""
        items = list(self.outbox)
        self.outbox.clear()
        tokens = self.tokens
        payloads = []
        for item in items:
            frame = tokens.pop(item).frame() if isinstance(item, tuple) else item
            try:
                binary, payload = self._encode(frame)
                payloads.append(payload if binary else payload.encode("utf-8"))
            except Exception:  # e.g. a lone surrogate: that frame cannot go out; the others do
                log.exception("websocket frame to %s cannot be encoded; dropped", self.peer)
        if payloads:
            frame_writer.write_frames(self.transport, payloads,
                                      frame_writer.OPCODE_BINARY if self.encoding == MSGPACK else frame_writer.OPCODE_TEXT)

    def _encode(self, frame: dict[str, Any]) -> tuple[bool, Any]:
        if self.encoding == JSON:
            return False, frame_writer.encode_json(frame)
        return True, frame_writer.encode_msgpack(frame)

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
                self._sending = True
                try:
                    await self.send_frame(self.tokens.pop(item).frame() if isinstance(item, tuple) else item)
                finally:
                    self._sending = False
        except (ConnectionError, RuntimeError) as exc:  # the client went away
            log.debug("websocket send to %s stopped: %r", self.peer, exc)
        except asyncio.CancelledError:
            pass

    def close(self, code: int, message: str, *, flush: bool = False) -> None:
        """Close from the loop without waiting (idempotent); ``flush`` first sends the frames already waiting."""
        if self._closer is None:
            self.closing = True
            self._closer = self.loop.create_task(self._close(code, message, flush))

    async def _flush(self) -> None:
        while self.outbox:
            item = self.outbox.popleft()
            await self.send_frame(self.tokens.pop(item).frame() if isinstance(item, tuple) else item)

    async def _close(self, code: int, message: str, flush: bool = False) -> None:
        # The sender may be parked in aiohttp's drain (the client stopped reading). Cancelling it can leave the
        # protocol's shared drain waiter cancelled, so the close below may raise CancelledError rather than
        # time out: whatever happens, unless the handshake really finished, abort the transport.
        closed = False
        try:
            self._unwatch_all()
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
            if flush:
                await asyncio.wait_for(self._flush(), timeout=CLOSE_TIMEOUT)
            await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), timeout=CLOSE_TIMEOUT)
            closed = True
        except (asyncio.CancelledError, Exception) as exc:
            log.debug("websocket close to %s did not finish (%r): aborting the transport", self.peer, exc)
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # this task itself is being cancelled (shutdown): the finally still aborts
        finally:
            if not closed and self.transport is not None:
                self.transport.abort()

    async def finish(self) -> None:
        """After the receive loop ends: stop listening and sending, and give up the sessions it owned."""
        self.closing = True
        self._unwatch_all()
        for sid in self.sessions:
            self.owners.release(sid, self)
        self.sessions = frozenset()
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
            if binary:
                data = msgpack.unpackb(raw, raw=False)
                check_depth(data, "frame")
            else:
                data = decode_json(raw, "frame")
        except InvalidMessage as exc:
            self.send_error("invalid_message" if isinstance(exc, TooDeep) else "invalid_json", str(exc), field="frame")
            return
        except Exception as exc:
            self.send_error("invalid_msgpack", f"frame is not valid msgpack: {exc}", field="frame")
            return
        if not isinstance(data, dict):
            self.send_error("invalid_message", f"frame must be a map, got {type(data).__name__}", field="frame")
            return
        if not self.authenticated:
            self._authenticate(data)
            return
        self.handle_message(data)

    def _authenticate(self, data: dict[str, Any]) -> None:
        """The first frame of a connection that did not bring the key in its upgrade request."""
        if data.get("type") == AUTH_FRAME and self.access.key_matches(data.get("api_key")):
            self.authenticated = True
            self._push({"type": "auth_ok"})
            return
        self.send_error("unauthorized", "missing or wrong API key: the first frame must be "
                        '{"type": "auth", "api_key": ...} (or send the key when connecting)', field="api_key")
        self.close(CLOSE_POLICY_VIOLATION, "unauthorized", flush=True)

    def handle_message(self, data: dict[str, Any]) -> None:
        kind = data.get("type")
        session, query_id = data.get("session"), data.get("id")
        try:
            self._dispatch(kind, data, query_id)
        except TooLong as exc:
            self.send_error("too_long", str(exc), field=exc.field, session=session, query_id=query_id)
        except Forbidden as exc:
            self.send_error("forbidden", str(exc).split(": ", 1)[-1], field=exc.field, session=session,
                            query_id=query_id)
        except InvalidMessage as exc:
            self.send_error("invalid_message", str(exc), field=exc.field, session=session, query_id=query_id)
        except Exception as exc:  # a bug here must cost one error frame, never the connection
            log.exception("websocket frame from %s failed", self.peer)
            self.send_error("internal", f"{type(exc).__name__}: {exc}", session=session, query_id=query_id)

    def _dispatch(self, kind: Any, data: dict[str, Any], query_id: Any) -> None:
        if kind == "query":
            query = Query.from_dict(data)
            check_room(self.reactive.template, self.reactive.model.config.max_seq_len, query.text,
                       query.options.max_new_tokens, tokens_field="options.max_new_tokens", text_field="text",
                       need_length=False)  # a short text fits without tokenizing it here (the lane does)
            self._watch(query.session_id)
            self.reactive.submit(query)
        elif kind == "cancel":
            message = Cancel(_required(data, "session"), "" if query_id is None else query_id)
            self._watch(message.session_id)
            self.reactive.submit(message)
        elif kind == "reset":
            message = Reset(_required(data, "session"))
            self._watch(message.session_id)
            self.reactive.submit(message)
        elif kind == AUTH_FRAME:
            self._push({"type": "auth_ok"})  # already authenticated (or no key configured)
        elif kind is None:
            raise InvalidMessage("type", "is required (one of query, cancel, reset)")
        else:
            raise InvalidMessage("type", f"{_short(kind)} is unknown (one of query, cancel, reset)")

    def _watch(self, session_id: str) -> None:
        """Own ``session_id`` (refused if another client owns it) and hear its events from now on."""
        if session_id in self.sessions:
            return
        if len(self.sessions) >= self.max_sessions:
            raise Forbidden("session", f"this connection already owns {len(self.sessions)} sessions, the limit "
                            f"max_sessions_per_connection={self.max_sessions}")
        if not self.owners.claim(session_id, self):
            raise Forbidden("session", forbidden_message(session_id))
        self.sessions = self.sessions | {session_id}
        if not self.closing:
            # One sink for every session of the connection: a drain's events come in one list, in seq order.
            self._watching[session_id] = self._bridge.listen(session_id, self._on_events)


def _required(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise InvalidMessage(name, "is required")
    return data[name]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    from rxnn_runtime.server.app import CONFIG, CONNECTIONS, OWNERS, REACTIVE

    config = request.app[CONFIG]
    access = config.access
    authenticated = access.bearer_ok(request) or (
        access.api_key is not None and access.key_matches(request.query.get("api_key"))
    )
    ws = web.WebSocketResponse(
        heartbeat=config.heartbeat, max_msg_size=config.max_message_bytes * HARD_LIMIT_FACTOR
    )
    await ws.prepare(request)
    conn = Connection(ws, request.app[REACTIVE], asyncio.get_running_loop(), outbox_limit=config.outbox_limit,
                      max_message_bytes=config.max_message_bytes, peer=str(request.remote),
                      transport=request.transport, owners=request.app[OWNERS],
                      max_sessions=config.max_sessions_per_connection, access=access, authenticated=authenticated)
    connections = request.app[CONNECTIONS]
    connections.add(conn)
    auth_timer = None
    if not authenticated:
        def _auth_timeout() -> None:
            if not conn.authenticated:
                conn.send_error("unauthorized", f"no auth frame within {AUTH_TIMEOUT}s", field="api_key")
                conn.close(CLOSE_POLICY_VIOLATION, "unauthorized", flush=True)

        auth_timer = asyncio.get_running_loop().call_later(AUTH_TIMEOUT, _auth_timeout)
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
        if auth_timer is not None:
            auth_timer.cancel()
        connections.discard(conn)
        await conn.finish()
        if not ws.closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(code=WSCloseCode.OK), timeout=2.0)
    return ws
