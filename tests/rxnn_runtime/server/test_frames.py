"""Event dicts and websocket frames are built field by field (the loop pays this for every frame): they must equal,
key order included, what `dataclasses.asdict` gave."""

import dataclasses

import pytest

from rxnn_runtime.events import (
    AnswerDone,
    Cancelled,
    Error,
    MemoryUpdated,
    MemoryUpdateStarted,
    QueryAccepted,
    Token,
)
from rxnn_runtime.server.websocket import event_to_frame

IDENTITY = dict(session_id="s", turn_id=3, seq=41, query_id=7)
EVENTS = [
    QueryAccepted(**IDENTITY, text="hi"),
    Token(**IDENTITY, index=2, token_id=99, text="é"),
    AnswerDone(**IDENTITY, text="a b", token_ids=(5, 6), stopped_by_eos=True, log_probs=(-0.5, -1.0), tail="\ufffd"),
    AnswerDone(session_id="t", text=""),
    MemoryUpdateStarted(**IDENTITY),
    MemoryUpdated(**IDENTITY, version=4),
    Cancelled(session_id="s", query_id="q", partial_text="par"),
    Error(code="queue_full", message="too many"),
]


def _reference_dict(event):
    data = dataclasses.asdict(event)
    return {"type": event.type, **{k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}}


def _reference_frame(event):
    data = _reference_dict(event)
    frame = {"type": data.pop("type"), "session": data.pop("session_id"), "id": data.pop("query_id"),
             "turn": data.pop("turn_id"), "seq": data.pop("seq")}
    frame.update(data)
    return frame


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_to_dict_and_frame_equal_the_asdict_forms(event):
    assert list(event.to_dict().items()) == list(_reference_dict(event).items())
    frame = event_to_frame(event)
    assert list(frame.items()) == list(_reference_frame(event).items())
    assert all(not isinstance(v, tuple) for v in frame.values())  # lists: msgpack and JSON alike
    frame["token_ids"] = "changed" if "token_ids" in frame else None
    assert event_to_frame(event) == _reference_frame(event)  # a frame is a fresh dict each time
