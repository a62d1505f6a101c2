"""Store commits of one update pass are handed over together: per worker one host copy and one report (or one
report every ``report_every_s`` of saving, so slow saves do not hold up the sessions saved before them)."""

import threading
import time

import pytest
import torch
from runtime_helpers import EventLog, record_plans, tiny_model

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.commit_writer import CommitWriter
from rxnn_runtime.events import MemoryUpdated
from rxnn_runtime.messages import GenerationOptions, Query, Reset
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.stores import CommittedState, InMemoryStore, SessionState


def _writer(store, workers=2, report_every_s=None):
    reports: list[list] = []
    done = threading.Event()
    expected = {"n": 0}

    def on_done(commits):
        reports.append(commits)
        if sum(map(len, reports)) == expected["n"]:
            done.set()

    return CommitWriter(store, on_done, workers=workers, report_every_s=report_every_s), reports, done, expected



class PickyStore(InMemoryStore):
    """Refuses to save the session named "bad" (a full disk), saves the others."""

    def save(self, state):
        if state.session_id == "bad":
            raise OSError("disk full")
        super().save(state)

def test_sessions_of_one_pass_are_one_job_and_one_report_per_worker():
    store = InMemoryStore()
    writer, reports, done, expected = _writer(store)
    states = [SessionState(session_id=f"s{i}", stm=torch.randn(2, 4, 8), turns=1, memory_version=1)
              for i in range(8)]
    expected["n"] = len(states)
    try:
        writer.submit_many([(f"turn{i}", state) for i, state in enumerate(states)])
        assert done.wait(10)
        shards = {writer.shard_of(s.session_id) for s in states}
        assert len(reports) == len(shards)  # one report per worker job, not one per session
        reported = {turn: (state, error) for report in reports for turn, state, error in report}
        assert set(reported) == {f"turn{i}" for i in range(8)} and all(e is None for _, e in reported.values())
        for state in states:
            saved = store.load(state.session_id)
            assert torch.equal(saved.stm, state.stm) and saved.turns == 1
        assert writer.pending == 0
    finally:
        writer.close()


def test_one_failing_save_fails_only_its_commit():
    store = PickyStore()
    writer, reports, done, expected = _writer(store, workers=1)
    expected["n"] = 3
    try:
        writer.submit_many([(sid, SessionState(session_id=sid, stm=torch.zeros(1, 2, 4)))
                            for sid in ("a", "bad", "b")])
        assert done.wait(10)
        assert len(reports) == 1
        errors = {turn: error for turn, _, error in reports[0]}
        assert errors["a"] is None and errors["b"] is None and "disk full" in errors["bad"]
        assert store.load("a") is not None and store.load("b") is not None and store.load("bad") is None
    finally:
        writer.close()


def test_memory_updated_of_sessions_finishing_together_leave_in_few_batches():
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=8)
    plans = record_plans(reactive)
    batches = EventLog()
    reactive.batches.subscribe(batches)
    for i in range(8):  # the same greedy query on the same initial memory: the same answer, finished together
        reactive.submit(Query(f"s{i}", "hello", GenerationOptions(max_new_tokens=3)))
    reactive.connect()
    try:
        assert batches.wait_for(lambda bs: sum(isinstance(e, MemoryUpdated) for b in bs for e in b) == 8)
        assert [len(p.updates) for p in plans if p.updates] == [8]
        with_commits = [[e for e in b if isinstance(e, MemoryUpdated)] for b in batches.events
                        if any(isinstance(e, MemoryUpdated) for e in b)]
        # The in-process store saves in place: the pass's 8 commits are saved and announced on the lane in one
        # action, one batch (through the commit writer's threads: a hop per worker; one hop per session gave 8).
        assert reactive.commits.saves_in_place([(None, reactive.sessions.get("s0"))])
        assert len(with_commits) == 1
        assert sorted(e.session_id for b in with_commits for e in b) == sorted(f"s{i}" for i in range(8))
        assert all(e.version == 1 for b in with_commits for e in b)
    finally:
        reactive.dispose()


def test_slow_saves_are_reported_as_they_go_not_at_the_end_of_the_job():
    """One worker, 6 sessions, 20 ms a save: reported every 1 ms of saving, each session's report comes right
    after its own save (6 reports, in order), where one report per job made the first wait for all six."""

    class Slow(InMemoryStore):
        def save(self, state):
            time.sleep(0.02)
            super().save(state)

    writer, reports, done, expected = _writer(Slow(), workers=1, report_every_s=0.001)
    expected["n"] = 6
    try:
        writer.submit_many([(f"t{i}", SessionState(session_id=f"s{i}", stm=torch.zeros(1, 2, 4))) for i in range(6)])
        assert done.wait(10)
        assert [[turn for turn, _, _ in report] for report in reports] == [[f"t{i}"] for i in range(6)]
        assert writer.pending == 0
    finally:
        writer.close()


def test_report_every_s_must_be_positive():
    with pytest.raises(ValueError, match="report_every_s=0"):
        CommitWriter(InMemoryStore(), lambda done: None, report_every_s=0)


def test_the_in_process_store_keeps_a_committed_stm_without_a_copy():
    """A `CommittedState` (the runtime's commits: an STM nothing writes into again) is kept as it is by the
    in-process store, so a commit copies nothing (on a GPU: no device-to-host copy, no memcpy); a plain
    `SessionState` from any other caller is still copied, and `load` always hands out a private copy."""
    store = InMemoryStore()
    writer, _reports, done, expected = _writer(store)
    committed = CommittedState(session_id="c", stm=torch.randn(2, 4, 8), turns=1, memory_version=1)
    plain = SessionState(session_id="p", stm=torch.randn(2, 4, 8), turns=1, memory_version=1)
    expected["n"] = 2
    try:
        writer.submit_many([("tc", committed), ("tp", plain)])
        assert done.wait(10)
        kept = store._records["c"][0].stm
        assert kept.data_ptr() == committed.stm.data_ptr()  # the tensor itself
        assert store._records["p"][0].stm.data_ptr() != plain.stm.data_ptr()  # a private copy
        loaded = store.load("c")
        assert torch.equal(loaded.stm, committed.stm) and loaded.stm.data_ptr() != committed.stm.data_ptr()
        assert not isinstance(loaded, CommittedState) and loaded.turns == 1
    finally:
        writer.close()


def test_runtime_commits_are_committed_states():
    """The session cache hands the commit writer `CommittedState`s for memory updates (kept without a copy) and
    plain states for resets (their initial STM may share storage with the model's parameters: copied)."""
    model, tokenizer = tiny_model()
    saved: list = []

    class Recording(InMemoryStore):
        def save(self, state):
            saved.append(state)
            super().save(state)

    reactive = ReactiveModel(model, tokenizer, store=Recording())
    log = EventLog()
    reactive.events.subscribe(log)
    reactive.connect()
    try:
        reactive.submit(Query("s", "hello", GenerationOptions(max_new_tokens=2)))
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 1)
        assert reactive.wait_idle(10)
        reactive.submit(Reset("s"))
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 2)
        assert [type(s) for s in saved] == [CommittedState, SessionState]
    finally:
        reactive.dispose()


def test_commit_reports_that_wait_for_the_lane_leave_in_one_batch():
    """Reports of several commit workers (one pass's sessions, sharded) that arrive while the lane is busy are
    announced in one lane action, one batch, so the sessions start their next turns together."""
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer)
    batches = EventLog()
    reactive.batches.subscribe(batches)
    reactive.connect()
    try:
        blocked, release = threading.Event(), threading.Event()
        reactive._lane.schedule(lambda *_: (blocked.set(), release.wait(10)))
        assert blocked.wait(10)
        for worker in range(3):  # as three workers report, while the lane runs a step
            turns = [ActiveTurn(Query(f"s{worker}{k}", "q"), 1, [1]) for k in range(2)]
            reactive._on_committed([(t, SessionState(session_id=t.session_id, stm=torch.zeros(1), memory_version=1),
                                     None) for t in turns])
        release.set()
        assert batches.wait_for(lambda bs: sum(isinstance(e, MemoryUpdated) for b in bs for e in b) == 6)
        with_commits = [b for b in batches.events if any(isinstance(e, MemoryUpdated) for e in b)]
        assert len(with_commits) == 1 and len(with_commits[0]) == 6
    finally:
        reactive.dispose()


def test_a_pass_the_in_process_store_keeps_is_one_job_one_save_many_and_one_report():
    """Committed STMs the in-process store keeps as they are: the pass's sessions are one job (not one per worker),
    saved in one `save_many` and announced in one report; each record is the committed tensor itself."""
    calls = []

    class Counting(InMemoryStore):
        def save_many(self, states):
            calls.append(len(states))
            return super().save_many(states)

    store = Counting()
    writer, reports, done, expected = _writer(store)
    states = [CommittedState(session_id=f"s{i}", stm=torch.randn(2, 4, 8), turns=1, memory_version=1)
              for i in range(8)]
    assert len({writer.shard_of(s.session_id) for s in states}) > 1  # sharded, these would be several jobs
    expected["n"] = len(states)
    try:
        writer.submit_many([(f"turn{i}", state) for i, state in enumerate(states)])
        assert done.wait(10)
        assert calls == [8] and len(reports) == 1
        assert [turn for turn, _, error in reports[0] if error is None] == [f"turn{i}" for i in range(8)]
        for state in states:
            assert store._records[state.session_id][0].stm.data_ptr() == state.stm.data_ptr()  # no copy
        assert writer.pending == 0
    finally:
        writer.close()


def test_save_many_fails_only_the_failing_states():
    for store in (PickyStore(), InMemoryStore()):
        states = [CommittedState(session_id=sid, stm=torch.zeros(1, 2, 4)) for sid in ("a", "bad", "b")]
        errors = store.save_many(states)
        if isinstance(store, PickyStore):
            assert errors[0] is None and errors[2] is None and "disk full" in errors[1]
            assert store.load("bad") is None
        else:
            assert errors == [None, None, None] and store.load("bad") is not None
        assert store.load("a") is not None and store.load("b") is not None


@pytest.mark.parametrize("metadata", [{}, {"user": {"name": "Ada"}, "tags": ["a", "b"]}])
def test_the_in_process_store_shares_no_metadata_with_the_caller(metadata):
    """Saved metadata is the store's own (empty: a new dict, with no round trip; otherwise through msgpack, as the
    other stores' records): the caller mutating its dict after the save changes nothing saved or loaded."""
    store = InMemoryStore()
    state = CommittedState(session_id="m", stm=torch.zeros(2, 4, 8), turns=1, memory_version=1, metadata=metadata)
    nested = bool(metadata)
    expected = {"user": {"name": "Ada"}, "tags": ["a", "b"]} if nested else {}
    assert store.save_many([state]) == [None]
    state.metadata["added"] = 1
    if nested:
        state.metadata["user"]["name"] = "Eve"
    assert store._records["m"][0].metadata == expected and store.load("m").metadata == expected
