"""Edge checks shared by the websocket and HTTP bridges: bounded JSON nesting, the model's token room.

Each check raises `InvalidMessage` naming the field and the limit, so the bridge answers with an error frame or
a 400 before anything reaches the model lane.
"""

from __future__ import annotations

import json
from typing import Any

from rxnn_runtime.messages import InvalidMessage

MAX_JSON_DEPTH = 32
"""Deepest nesting of maps/lists accepted in a frame or body; real requests need 4 (OpenAI content parts)."""


class TooDeep(InvalidMessage):
    """Maps/lists nested deeper than `MAX_JSON_DEPTH`."""


class TooLong(InvalidMessage):
    """Prompt + answer budget over the model's ``max_seq_len`` (error code ``too_long``, as the runtime uses)."""


def check_depth(value: Any, field: str, limit: int = MAX_JSON_DEPTH) -> None:
    """Refuse ``value`` if its maps/lists nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            raise TooDeep(field, f"nests maps/lists deeper than the limit {limit}")
        stack.extend((child, depth + 1) for child in children)


def decode_json(raw: str | bytes, field: str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` whose failures (including Python's recursion limit on deep nesting) name ``field``."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise TooDeep(field, f"nests maps/lists deeper than the limit {limit}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidMessage(field, f"is not valid JSON: {exc}") from None
    check_depth(data, field, limit)
    return data


def check_room(template: Any, max_seq_len: int, text: str, max_new_tokens: int, *, tokens_field: str,
               text_field: str) -> int:
    """The query's prompt length; raises if prompt + ``max_new_tokens`` cannot fit in ``max_seq_len``.

    Names ``tokens_field`` when even an empty query leaves no room for that many tokens (the model's room is the
    limit), else ``text_field`` (the text is too long for the answer budget).
    """
    room = max_seq_len - len(template.query_ids(""))
    if max_new_tokens > room:
        raise TooLong(tokens_field, f"{max_new_tokens} is more than the model's room: at most {room} "
                             f"(max_seq_len={max_seq_len} minus the query framing)")
    prompt = len(template.query_ids(text))
    if prompt + max_new_tokens > max_seq_len:
        raise TooLong(text_field, f"is {prompt} tokens; with {tokens_field}={max_new_tokens} the limit is "
                             f"{max_seq_len - max_new_tokens} (max_seq_len={max_seq_len})")
    return prompt


__all__ = ["MAX_JSON_DEPTH", "TooDeep", "TooLong", "check_depth", "check_room", "decode_json"]
