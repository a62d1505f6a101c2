"""Failures inside the lane become that turn's Error, never a hang; priming is batched, fair and cancellable."""

import threading
import time

import pytest
import torch
from runtime_helpers import EventLog, tiny_model

from rxnn_runtime.events import AnswerDone, Error, MemoryUpdated
from rxnn_runtime.messages import Cancel, GenerationOptions, Prime, Query
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.stores import InMemoryStore, SessionState
from rxt.chat import ReactiveChat
from rxt.sampling import SamplingConfig

OPTS = GenerationOptions(max_new_tokens=4)


def _runtime(connect=True, **kw):
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4, **kw)
    log = EventLog()
    reactive.events.subscribe(log)
    if connect:
        reactive.connect()
    return reactive, log


def _done(log, sid, kinds=(MemoryUpdated, Error)):
    return log.wait_for(lambda ev: any(isinstance(e, kinds) and e.session_id == sid for e in ev), timeout=60)


def test_tokenizer_failure_is_an_error_for_that_turn_and_others_go_on():
    """A query the tokenizer cannot encode (a lone surrogate used to reach it; `Query` now refuses those at
    the edge) fails on the lane: that turn gets an Error, the lane and the other sessions go on."""
    reactive, log = _runtime()
    tokenizer = reactive.template.tokenizer
    encode = tokenizer.encode

    def fragile(text, *args, **kwargs):
        if "boom" in text:
            raise UnicodeEncodeError("utf-8", text, 0, 1, "surrogates not allowed")
        return encode(text, *args, **kwargs)

    def fragile_batch(texts):  # queries arriving together are tokenized in one call: it fails as a whole
        return [fragile(text) for text in texts]

    # the tokenizer itself fails (alone or in a batch), not a wrapper around it
    tokenizer.encode, tokenizer.encode_batch = fragile, fragile_batch
    try:
        reactive.submit(Query("bad", "hello boom there", OPTS, query_id="q"))
        reactive.submit(Query("good", "hello", OPTS))
        assert _done(log, "bad") and _done(log, "good")
        error = next(e for e in log.events if e.session_id == "bad")
        assert isinstance(error, Error) and error.code == "invalid" and error.query_id == "q"
        assert any(isinstance(e, MemoryUpdated) for e in log.events if e.session_id == "good")
        # The lane lives on: the same session can ask again.
        assert isinstance(reactive.session("bad").ask_sync("fine now", OPTS), str)
    finally:
        del tokenizer.encode, tokenizer.encode_batch
        reactive.dispose()


class _PlantedStore(InMemoryStore):
    """A store whose record for "s" is whatever the test planted (as a store with a bad record would load it)."""

    def __init__(self, planted):
        super().__init__()
        self.planted = planted

    def load(self, session_id):
        if session_id == "s":
            if isinstance(self.planted, Exception):
                raise self.planted
            return self.planted
        return super().load(session_id)


@pytest.mark.parametrize("record, needle", [
    ("not a state", "not a SessionState"),
    ("mistyped", "turns='3'"),
    ("nan", "NaN"),
    ("corrupt", "truncated record"),
])
def test_bad_stored_record_is_a_session_error_not_a_hang(record, needle):
    model, _ = tiny_model()
    stm = model.initial_memory(1)[:, 0].clone()
    planted = {
        "not a state": "not a state",
        "mistyped": SessionState("s", stm, turns="3"),
        "nan": SessionState("s", torch.full_like(stm, float("nan"))),
        "corrupt": ValueError("truncated record"),
    }[record]
    reactive, log = _runtime(store=_PlantedStore(planted))
    try:
        reactive.submit(Query("s", "hello", OPTS, query_id="q"))
        reactive.submit(Query("other", "hello", OPTS))
        assert _done(log, "s") and _done(log, "other")
        error = next(e for e in log.events if e.session_id == "s")
        assert isinstance(error, Error) and error.code == "session" and needle in error.message
        assert any(isinstance(e, MemoryUpdated) for e in log.events if e.session_id == "other")
    finally:
        reactive.dispose()


def test_priming_is_batched_fair_and_cancellable():
    reactive, log = _runtime(connect=False)
    calls = []
    update = reactive.model.update_memory

    def counting_update(stm, ids, mask=None, **kw):
        calls.append(stm.shape[1])
        time.sleep(0.01)  # a slow update pass, so there is time to cancel
        return update(stm, ids, mask, **kw)

    reactive.model.update_memory = counting_update
    try:
        history = [(f"question {i}", f"answer {i}") for i in range(300)]
        reactive.submit(Prime("a", tuple(history[:3]), query_id="pa"))
        reactive.submit(Prime("b", tuple(history[:3]), query_id="pb"))
        reactive.connect()  # both histories arrived together
        assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == 6)
        assert sum(calls) == 6 and len(calls) < 6 and max(calls) == 2  # the sessions share update passes
        assert [e.version for e in log.events if isinstance(e, MemoryUpdated) and e.session_id == "a"] == [1, 2, 3]

        reactive.prime("long", history, query_id="hist")
        t0 = time.monotonic()
        text = reactive.session("other").ask_sync("are you there?", OPTS, timeout=30)
        assert isinstance(text, str) and time.monotonic() - t0 < 10  # not behind 300 primes
        reactive.submit(Cancel("long"))
        assert reactive.wait_idle(timeout=30)
        written = sum(isinstance(e, MemoryUpdated) and e.session_id == "long" for e in log.events)
        assert 0 < written < len(history)
        assert reactive.session_state("long").turns == written
    finally:
        reactive.dispose()


def test_store_commits_run_off_the_lane():
    gate = threading.Event()

    class SlowStore(InMemoryStore):
        def save(self, state):
            if state.session_id == "slow":
                gate.wait(30)
            super().save(state)

    reactive, log = _runtime(store=SlowStore())
    try:
        reactive.submit(Query("slow", "hello", OPTS))
        assert log.wait_for(lambda ev: any(isinstance(e, AnswerDone) and e.session_id == "slow" for e in ev))
        # While "slow" is being saved, another session (on another commit worker) is answered and committed.
        fast = next(f"fast{i}" for i in range(100) if reactive.commits.shard_of(f"fast{i}") !=
                    reactive.commits.shard_of("slow"))
        assert isinstance(reactive.session(fast).ask_sync("hi", OPTS, timeout=30), str)
        assert _done(log, fast)
        assert not any(isinstance(e, MemoryUpdated) and e.session_id == "slow" for e in log.events)
        gate.set()
        assert _done(log, "slow")
        assert reactive.session_state("slow").turns == 1
    finally:
        gate.set()
        reactive.dispose()


def test_seeded_sampling_in_a_batch_matches_the_chat_alone():
    model, tokenizer = tiny_model()
    seeds = [3, 4, 5]
    expected = []
    for seed in seeds:
        chat = ReactiveChat(model, tokenizer, SamplingConfig(max_new_tokens=6, temperature=1.0, seed=seed))
        expected.append([chat.ask("tell me"), chat.ask("more")])
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    log = EventLog()
    reactive.events.subscribe(log)
    for i, seed in enumerate(seeds):
        opts = GenerationOptions(max_new_tokens=6, temperature=1.0, seed=seed)
        reactive.submit(Query(f"s{i}", "tell me", opts))
        reactive.submit(Query(f"s{i}", "more", opts))
    reactive.connect()
    try:
        assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == 6)
        for i in range(len(seeds)):
            assert [e.text for e in log.events if isinstance(e, AnswerDone) and e.session_id == f"s{i}"] == \
                expected[i]
    finally:
        reactive.dispose()


def test_session_cache_is_bounded_and_evicted_sessions_reload_from_the_store():
    reactive, _log = _runtime(session_cache_size=2)
    try:
        for sid in ("a", "b", "c"):
            reactive.session(sid).ask_sync("hello", OPTS)
        assert reactive.wait_idle()
        assert len(reactive.sessions) <= 2
        reactive.session("a").ask_sync("again", OPTS)
        assert reactive.wait_idle()
        assert reactive.session_state("a").turns == 2  # reloaded with its committed turn count
    finally:
        reactive.dispose()


def test_a_turn_that_fills_its_cache_row_ends_cleanly_while_others_decode():
    """prompt + max_new_tokens == max_seq_len: the row fills up; the step launched ahead must not feed it."""
    reactive, log = _runtime()
    try:
        text = "fill the row"
        room = reactive.model.config.max_seq_len - len(reactive.template.query_ids(text))
        reactive.submit(Query("full", text, GenerationOptions(max_new_tokens=room), query_id="f"))
        reactive.submit(Query("other", "hello", GenerationOptions(max_new_tokens=room), query_id="o"))
        assert _done(log, "full") and _done(log, "other")
        assert not [e for e in log.events if isinstance(e, Error)]
        done = next(e for e in log.events if isinstance(e, AnswerDone) and e.session_id == "full")
        assert done.stopped_by_eos or len(done.token_ids) == room
    finally:
        reactive.dispose()
