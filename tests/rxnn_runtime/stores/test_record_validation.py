"""Session records are validated field by field when loaded: a wrongly typed field is a clear error naming it
(through a real server: tests/rxnn_runtime/server/test_validation.py)."""

from __future__ import annotations

import msgpack
import pytest
import torch
from safetensors.torch import save

from rxnn_runtime.stores import SessionState
from rxnn_runtime.stores.directory import CorruptSessionRecord, DirectoryStore


def record(**override) -> bytes:
    raw = {"format": 1, "session_id": "s", "turns": 2, "memory_version": 2, "metadata": {}, "updated_at": 1.5,
           "stm": save({"stm": torch.zeros(2, 4, 8)})}
    raw.update(override)
    for key in [k for k, v in raw.items() if v is ...]:
        del raw[key]
    return msgpack.packb(raw, use_bin_type=True)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"turns": "3"}, "turns"),
        ({"turns": -1}, "turns"),
        ({"turns": True}, "turns"),
        ({"memory_version": 1.5}, "memory_version"),
        ({"session_id": 7}, "session_id"),
        ({"metadata": [1]}, "metadata"),
        ({"updated_at": float("nan")}, "updated_at"),
        ({"stm": "not bytes"}, "stm"),
        ({"stm": save({"other": torch.zeros(2)})}, "stm"),
        ({"stm": save({"stm": torch.zeros(2, 4, 8, dtype=torch.int64)})}, "stm"),
        ({"turns": ...}, "turns"),
    ],
)
def test_wrongly_typed_fields_are_named(override, field):
    with pytest.raises(ValueError, match=field):
        SessionState.from_bytes(record(**override))


def test_a_valid_record_loads():
    state = SessionState.from_bytes(record())
    assert (state.session_id, state.turns, state.memory_version, state.updated_at) == ("s", 2, 2, 1.5)


def test_directory_store_names_the_file_of_a_mistyped_record(tmp_path):
    (tmp_path / "s.rxs").write_bytes(record(turns="many"))
    with pytest.raises(CorruptSessionRecord, match=r"s\.rxs.*'turns'"):
        DirectoryStore(tmp_path).load("s")
