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


_FRAMING: dict[int, tuple[Any, int]] = {}  # id(template) -> (template, its framing length); a few templates


def _framing(template: Any) -> int:
    """Tokens a prompt adds around the query's own (``[BOS][Q] ... [A]``): one tokenizer call per template."""
    hit = _FRAMING.get(id(template))
    if hit is not None and hit[0] is template:
        return hit[1]
    length = len(template.query_ids(""))
    if len(_FRAMING) >= 16:
        _FRAMING.clear()
    _FRAMING[id(template)] = (template, length)
    return length


def check_room(template: Any, max_seq_len: int, text: str, max_new_tokens: int, *, tokens_field: str,
               text_field: str, need_length: bool = True) -> int | None:
    """The query's prompt length; raises if prompt + ``max_new_tokens`` cannot fit in ``max_seq_len``.

    Names ``tokens_field`` when even an empty query leaves no room for that many tokens (the model's room is the
    limit), else ``text_field`` (the text is too long for the answer budget). ``need_length`` False: a caller
    that only wants the check gets None, without tokenizing, when the tokenizer's bound
    (`RxTokenizer.max_token_count`) already shows the prompt fits; otherwise the text is tokenized and its length
    returned (the same verdicts and errors either way).
    """
    room = max_seq_len - _framing(template)
    if max_new_tokens > room:
        raise TooLong(tokens_field, f"{max_new_tokens} is more than the model's room: at most {room} "
                             f"(max_seq_len={max_seq_len} minus the query framing)")
    if not need_length:
        bound_of = getattr(getattr(template, "tokenizer", None), "max_token_count", None)
        bound = bound_of(text) if bound_of is not None else None
        if bound is not None and bound + max_new_tokens <= room:
            return None
    prompt = len(template.query_ids(text))
    if prompt + max_new_tokens > max_seq_len:
        raise TooLong(text_field, f"is {prompt} tokens; with {tokens_field}={max_new_tokens} the limit is "
                             f"{max_seq_len - max_new_tokens} (max_seq_len={max_seq_len})")
    return prompt


__all__ = ["MAX_JSON_DEPTH", "TooDeep", "TooLong", "check_depth", "check_room", "decode_json"]
