"""OpenAI-compatible `POST /v1/chat/completions` and `GET /v1/models` (see docs/protocol.md).

The model is stateful: only the newest user message is processed; the earlier turns live in the session's
memory. The session comes from the ``X-Session-Id`` header or the ``user`` field. A request with neither gets a
fresh session (returned in the ``X-Session-Id`` response header) whose memory is first primed with the
request's earlier (user, assistant) turns via `ReactiveModel.prime`, at most ``max_history_messages`` of them
(one batched memory-update row per interaction and step; cancelled with the request when the client goes away).
The request's events reach the handler through the one Rx-to-asyncio bridge (`rxnn_runtime.event_bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

from aiohttp import web
from reactivex import operators as ops

from rxnn_runtime.event_bridge import EventBridge, EventQueue
from rxnn_runtime.events import AnswerDone, Cancelled, Error, Event, Token
from rxnn_runtime.messages import (
    MAX_NEW_TOKENS_LIMIT,
    Cancel,
    GenerationOptions,
    InvalidMessage,
    Query,
    _check_session_id,
    check_text,
)
from rxnn_runtime.server.security import SessionOwners, forbidden_message
from rxnn_runtime.server.validation import check_room, decode_json

ROLES = ("system", "user", "assistant", "developer", "tool")
_OPTION_PARAMS = {
    "options.max_new_tokens": "max_tokens",
    "options.temperature": "temperature",
    "options.top_p": "top_p",
    "options.seed": "seed",
    "text": "messages",
    "session": "user",
    "id": "user",
}


class BadRequest(Exception):
    def __init__(self, param: str | None, message: str, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.param, self.message, self.status, self.kind = param, message, status, kind

    def response(self) -> web.Response:
        return web.json_response(
            {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}},
            status=self.status,
        )


def _content(message: dict[str, Any], i: int) -> str:
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return _text(content, f"messages[{i}].content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRequest(f"messages[{i}].content[{j}]", "only text parts ({type: text, text}) are supported")
            parts.append(_text(part["text"], f"messages[{i}].content[{j}].text"))
        return "".join(parts)
    raise BadRequest(f"messages[{i}].content", f"must be a string or a list of text parts, got "
                     f"{type(content).__name__}")


def _text(value: str, param: str) -> str:
    try:
        return check_text(value, param)
    except InvalidMessage as exc:
        raise BadRequest(param, str(exc)) from None


def parse_request(body: dict[str, Any], header_session: str | None, *,
                  max_history_messages: int | None = None) -> dict[str, Any]:
    """Validate an OpenAI chat request; raises BadRequest naming the parameter.

    ``max_history_messages`` caps the earlier messages of a session-less request (those are primed into memory).
    """
    if not isinstance(body, dict):
        raise BadRequest(None, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("model", "must be a string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages", "is required: a non-empty list of {role, content}")
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}]", "must be an object {role, content}")
        role = message.get("role")
        if role not in ROLES:
            raise BadRequest(f"messages[{i}].role", f"must be one of {list(ROLES)}, got {role!r:.40}")
        turns.append((role, _content(message, i)))
    if turns[-1][0] != "user":
        raise BadRequest("messages", "the last message must have role 'user'")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream", "must be a boolean")
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise BadRequest("n", "only n=1 is supported")
    options: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise BadRequest("max_tokens", "must be an integer")
        if not 1 <= max_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise BadRequest("max_tokens", f"{max_tokens} is outside 1..{MAX_NEW_TOKENS_LIMIT}")
        options["max_new_tokens"] = max_tokens
    for name in ("temperature", "top_p", "seed"):
        if body.get(name) is not None:
            options[name] = body[name]
    try:
        generation = GenerationOptions.from_dict(options)
    except InvalidMessage as exc:
        param = _OPTION_PARAMS.get(exc.field, exc.field)
        raise BadRequest(param, f"{param}: {str(exc).split(': ', 1)[-1]}") from None
    session = None
    param = "user"
    if header_session is not None:
        session, param = header_session, "X-Session-Id"
    elif body.get("user") is not None:
        session = body["user"]
    if session is not None:
        try:
            _check_session_id(session, param)
        except InvalidMessage as exc:
            raise BadRequest(param, str(exc)) from None
    if session is None and max_history_messages is not None and len(turns) - 1 > max_history_messages:
        raise BadRequest("messages", f"{len(turns) - 1} earlier messages to prime into memory, more than the limit "
                         f"max_history_messages={max_history_messages}; send X-Session-Id to continue a session "
                         "instead of resending its history")
    return {"turns": turns, "stream": stream, "options": generation, "session": session}


def history_pairs(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Earlier turns as (query, answer) interactions: each user message with the assistant reply after it.

    System/developer messages become an interaction of their own (text, ""); tool messages are skipped.
    """
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in turns:
        if role == "user":
            if pending is not None:
                pairs.append((pending, ""))
            pending = text
        elif role == "assistant":
            pairs.append((pending or "", text))
            pending = None
        elif role in ("system", "developer"):
            if pending is not None:
                pairs.append((pending, ""))
                pending = None
            pairs.append((text, ""))
    if pending is not None:
        pairs.append((pending, ""))
    return pairs


def _chunk(cid: str, created: int, model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    data = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(data, ensure_ascii=False).encode() + b"\n\n"


def _finish_reason(event: AnswerDone, options: GenerationOptions) -> str:
    if event.stopped_by_eos or len(event.token_ids) < options.max_new_tokens:
        return "stop"
    return "length"


def _turn_error(event: Event) -> BadRequest:
    if isinstance(event, Cancelled):
        return BadRequest(None, "the turn was cancelled", status=500, kind="server_error")
    code = getattr(event, "code", "internal")
    message = getattr(event, "message", "")
    if code == "queue_full":
        return BadRequest(None, message, status=429, kind="rate_limit_error")
    if code in ("too_long", "invalid"):
        return BadRequest("messages", message)
    return BadRequest(None, f"{code}: {message}", status=500, kind="server_error")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    from rxnn_runtime.server.app import CONFIG, OWNERS, REACTIVE

    config = request.app[CONFIG]
    reactive = request.app[REACTIVE]
    try:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BadRequest(None, f"the request body is larger than the limit max_body_bytes="
                             f"{config.max_body_bytes}", status=413) from None
        try:
            body = decode_json(raw, "body")
        except InvalidMessage as exc:
            raise BadRequest(None, f"the request {exc}") from None
        req = parse_request(body, request.headers.get("X-Session-Id"),
                            max_history_messages=config.max_history_messages)
        session = req["session"] or f"chat-{uuid.uuid4().hex}"
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            query = Query(session, req["turns"][-1][1], req["options"], query_id=cid)
            prompt_tokens = check_room(reactive.template, reactive.model.config.max_seq_len, query.text,
                                       query.options.max_new_tokens, tokens_field="max_tokens",
                                       text_field="messages")
        except InvalidMessage as exc:
            param = _OPTION_PARAMS.get(exc.field, exc.field)
            raise BadRequest(param, f"{param}: {str(exc).split(': ', 1)[-1]}") from None
        owners = request.app[OWNERS]
        if not owners.claim(session, SessionOwners.HTTP):
            raise BadRequest("X-Session-Id" if request.headers.get("X-Session-Id") else "user",
                             forbidden_message(session), status=409, kind="conflict_error")
    except BadRequest as exc:
        return exc.response()

    loop = asyncio.get_running_loop()
    prime_id = f"{cid}-prime"
    primed = req["session"] is None and len(req["turns"]) > 1
    # The query's events, and the priming's errors (a history that cannot be written fails the request).
    queue = EventQueue(EventBridge.of(reactive, loop).session_events(session).pipe(
        ops.filter(lambda e: e.query_id == cid or (e.query_id == prime_id and isinstance(e, Error)))))

    response: web.StreamResponse | None = None
    finished = False
    try:
        if primed:
            reactive.prime(session, history_pairs(req["turns"][:-1]), query_id=prime_id)
        reactive.submit(query)
        created = int(time.time())
        model = config.model_name
        deadline = loop.time() + config.request_timeout
        headers = {"X-Session-Id": session}

        async def next_event() -> Event:
            return await asyncio.wait_for(queue.__anext__(), timeout=max(0.0, deadline - loop.time()))

        if not req["stream"]:
            while True:
                event = await next_event()
                if isinstance(event, AnswerDone):
                    finished = True
                    return web.json_response({
                        "id": cid, "object": "chat.completion", "created": created, "model": model,
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": event.text},
                                     "finish_reason": _finish_reason(event, query.options)}],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(event.token_ids),
                                  "total_tokens": prompt_tokens + len(event.token_ids)},
                    }, headers=headers)
                if isinstance(event, (Error, Cancelled)):
                    finished = True
                    resp = _turn_error(event).response()
                    resp.headers.update(headers)
                    return resp

        response = web.StreamResponse(headers={
            **headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        await response.prepare(request)
        await response.write(_chunk(cid, created, model, {"role": "assistant", "content": ""}))
        while True:
            event = await next_event()
            pieces = []
            # Coalesce whatever tokens are already waiting into one chunk.
            while isinstance(event, Token):
                pieces.append(event.text)
                event = queue.get_nowait()
                if event is None:
                    break
            text = "".join(pieces)
            if isinstance(event, AnswerDone):
                text += event.tail  # an unfinished character at the end, owed by the token stream
            if text:
                await response.write(_chunk(cid, created, model, {"content": text}))
            if isinstance(event, AnswerDone):
                finished = True
                await response.write(_chunk(cid, created, model, {}, _finish_reason(event, query.options)))
                break
            if isinstance(event, (Error, Cancelled)):
                finished = True
                err = _turn_error(event)
                payload = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": None}}
                await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                break
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    except TimeoutError:
        err = BadRequest(None, f"no answer within request_timeout={config.request_timeout}s", status=504,
                         kind="server_error")
        if response is None:
            return err.response()
        payload = {"error": {"message": err.message, "type": err.kind, "param": None, "code": None}}
        await response.write(b"data: " + json.dumps(payload).encode() + b"\n\ndata: [DONE]\n\n")
        await response.write_eof()
        return response
    finally:
        queue.close()
        owners.release(session, SessionOwners.HTTP)
        if not finished:  # client gone, timeout or error: do not keep decoding (or priming) for nobody
            with contextlib.suppress(Exception):
                reactive.submit(Cancel(session) if primed else Cancel(session, cid))


async def list_models(request: web.Request) -> web.Response:
    from rxnn_runtime.server.app import CONFIG

    name = request.app[CONFIG].model_name
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "rxnn"},
    ]})
