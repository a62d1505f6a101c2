"""`token_event`, the fast Token constructor the runtime's scheduler uses per token."""

import copy
import dataclasses
import pickle

import pytest

from rxt.events import Token, token_event


@pytest.mark.parametrize("query_id", ["q", 7, ""])
def test_token_event_equals_the_constructors_token(query_id):
    fast = token_event("s", 3, 41, query_id, 2, 99, "é")
    slow = Token(session_id="s", turn_id=3, seq=41, query_id=query_id, index=2, token_id=99, text="é")
    assert type(fast) is Token and fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert dataclasses.asdict(fast) == dataclasses.asdict(slow) and fast.to_dict() == slow.to_dict()
    assert pickle.loads(pickle.dumps(fast)) == slow and copy.copy(fast) == slow
    assert dataclasses.replace(fast, text="x") == dataclasses.replace(slow, text="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.text = "changed"
