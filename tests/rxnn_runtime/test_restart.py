"""A server killed with SIGKILL between turns loses nothing that was committed, for the directory and Redis stores."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from runtime_helpers import tiny_model

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.stores import open_store
from rxt.chat import ReactiveChat
from rxt.model import RxT
from rxt.sampling import SamplingConfig
from rxt.tokenizer import RxTokenizer

SERVER = textwrap.dedent(
    """
    import sys, time
    from rxnn_runtime.reactive_model import ReactiveModel
    from rxnn_runtime.stores import open_store
    from rxt.model import RxT
    from rxt.tokenizer import RxTokenizer
    model = RxT.from_pretrained(sys.argv[1])
    reactive = ReactiveModel(model, RxTokenizer.default(), store=open_store(sys.argv[2]))
    reactive.connect()
    answer = reactive.session("alice").ask_sync("my name is Ada", {"max_new_tokens": 6})
    assert reactive.wait_idle()
    print("COMMITTED", repr(answer), flush=True)
    time.sleep(600)  # killed by the test
    """
)


@pytest.fixture(params=["directory", "redis"])
def store_url(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "sessions")
    return request.getfixturevalue("redis_url")


def test_sigkill_between_turns_then_restart_continues_identically(tmp_path, store_url):
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "model"), store_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # blocks until the first turn is committed (or the child dies)
        assert line.startswith("COMMITTED"), proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Reference: the same two turns in one uninterrupted in-process conversation.
    reference = ReactiveChat(RxT.from_pretrained(tmp_path / "model"), tokenizer, SamplingConfig(max_new_tokens=6))
    first = reference.ask("my name is Ada")
    assert line.strip() == f"COMMITTED {first!r}"
    stm_after_first = reference.stm[:, 0].clone()
    second = reference.ask("what is my name?")
    # The restarted server reads the committed session from the store and carries on.
    store = open_store(store_url)
    state = store.load("alice")
    assert state.turns == 1 and state.memory_version == 1
    torch.testing.assert_close(state.stm, stm_after_first, atol=1e-6, rtol=0)
    restarted = ReactiveModel(RxT.from_pretrained(tmp_path / "model"), RxTokenizer.default(), store=store)
    restarted.connect()
    try:
        assert restarted.session("alice").ask_sync("what is my name?", GenerationOptions(max_new_tokens=6)) == second
        assert restarted.wait_idle()
        state = store.load("alice")
        assert state.turns == 2
        torch.testing.assert_close(state.stm, reference.stm[:, 0], atol=1e-6, rtol=0)
    finally:
        restarted.dispose()


def test_turn_numbers_stay_unique_across_a_cancelled_turn_and_a_restart(tmp_path):
    """One rule: accepted queries take the next number (cancelled ones too), a commit stores its turn's number,
    a restart resumes from the last committed number + 1. Two committed turns never share a number, even with a
    cancelled turn before a commit, a cancelled turn just before the restart, and the restart itself."""
    from runtime_helpers import EventLog

    from rxnn_runtime.events import AnswerDone, Cancelled, MemoryUpdated
    from rxnn_runtime.messages import Cancel, Query

    model, tokenizer = tiny_model(seed=5)
    model.save_pretrained(tmp_path / "model")
    url = str(tmp_path / "sessions")
    opts = GenerationOptions(max_new_tokens=4)

    def run(messages):
        """One server life: the messages queued before connect (a cancelled query is still waiting when its
        Cancel is handled, so it is cancelled for sure), run to idle, then shut down."""
        log = EventLog()
        reactive = ReactiveModel(RxT.from_pretrained(tmp_path / "model"), tokenizer, store=open_store(url))
        reactive.events.subscribe(log)
        for message in messages:
            reactive.submit(message)
        reactive.connect()
        try:
            committed = sum(isinstance(m, Query) for m in messages) - sum(isinstance(m, Cancel) for m in messages)
            assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == committed)
            assert reactive.wait_idle()
        finally:
            reactive.dispose()
        turns = {kind: [(e.query_id, e.turn_id) for e in log.events if isinstance(e, kind)]
                 for kind in (AnswerDone, Cancelled, MemoryUpdated)}
        assert turns[AnswerDone] == turns[MemoryUpdated]
        return turns

    first = run([Query("s", "one", opts, query_id="a"), Query("s", "two", opts, query_id="b"), Cancel("s", "b"),
                 Query("s", "three", opts, query_id="c"), Query("s", "four", opts, query_id="d"), Cancel("s", "d")])
    assert first[Cancelled] == [("b", 2), ("d", 4)]
    assert first[MemoryUpdated] == [("a", 1), ("c", 3)]
    assert open_store(url).load("s").turns == 3  # the number of the last committed turn, not the count (2)

    second = run([Query("s", "five", opts, query_id="e"), Query("s", "six", opts, query_id="f"), Cancel("s", "f"),
                  Query("s", "seven", opts, query_id="g")])
    assert second[MemoryUpdated] == [("e", 4), ("g", 6)]
    committed = [turn for _, turn in first[MemoryUpdated] + second[MemoryUpdated]]
    assert committed == sorted(set(committed))  # unique and increasing across the restart
    assert open_store(url).load("s").turns == 6
