import threading

import pytest
import torch
from reactivex.scheduler import EventLoopScheduler
from runtime_helpers import EventLog, FakePass, record_plans, start_short_and_long, tiny_model

from rxnn_runtime.events import (
    AnswerDone,
    Cancelled,
    Error,
    MemoryUpdated,
    MemoryUpdateStarted,
    QueryAccepted,
    Token,
    event_from_dict,
)
from rxnn_runtime.messages import Cancel, GenerationOptions, InvalidMessage, Query, Reset
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.chat import ReactiveChat
from rxt.sampling import SamplingConfig

OPTS = GenerationOptions(max_new_tokens=6)
TURN_ORDER = [QueryAccepted, Token, AnswerDone, MemoryUpdateStarted, MemoryUpdated]


@pytest.fixture
def runtime():
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=8)
    log = EventLog()
    reactive.events.subscribe(log)
    yield reactive, log
    reactive.dispose()


def _kinds_in_order(kinds):
    """Collapse runs of Token so a turn reads QueryAccepted, Token, AnswerDone, ... ."""
    out = []
    for k in kinds:
        if not out or not (k is Token and out[-1] is Token):
            out.append(k)
    return out


def test_nothing_flows_before_connect(runtime):
    reactive, log = runtime
    reactive.submit(Query("s1", "hello", OPTS))
    assert not log.wait_for(lambda ev: len(ev) > 0, timeout=0.5)
    reactive.connect()
    assert log.wait_for(lambda ev: any(isinstance(e, MemoryUpdated) for e in ev))


def test_event_order_under_20_concurrent_sessions_with_two_turns_each(runtime):
    reactive, log = runtime
    reactive.connect()
    sessions = [f"user-{i}" for i in range(20)]
    barrier = threading.Barrier(len(sessions))

    def client(sid):
        barrier.wait()
        reactive.submit(Query(sid, "first question", OPTS, query_id=f"{sid}/1"))
        reactive.submit(Query(sid, "second question", OPTS, query_id=f"{sid}/2"))

    threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == 40, timeout=120)
    seqs = [e.seq for e in log.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for sid in sessions:
        mine = [e for e in log.events if e.session_id == sid]
        for turn in (1, 2):
            turn_events = [e for e in mine if e.turn_id == turn]
            assert _kinds_in_order([type(e) for e in turn_events]) == TURN_ORDER, sid
        # Turn 2 answers only after turn 1 is committed, and reads that memory.
        committed_1 = next(i for i, e in enumerate(mine) if isinstance(e, MemoryUpdated) and e.turn_id == 1)
        first_token_2 = next(i for i, e in enumerate(mine) if isinstance(e, Token) and e.turn_id == 2)
        assert committed_1 < first_token_2
        assert [e.version for e in mine if isinstance(e, MemoryUpdated)] == [1, 2]


def test_batched_turns_match_one_at_a_time_greedy():
    model, tokenizer = tiny_model()
    queries = ["hi there", "what is the weather like", "tell me a story about bees", "ok"]
    sequential = []
    for q in queries:  # the model-level chat, one session at a time
        chat = ReactiveChat(model, tokenizer, SamplingConfig(max_new_tokens=6))
        sequential.append([chat.ask(q), chat.ask("and then?")])
    reactive = ReactiveModel(model, tokenizer, max_batch_size=8)
    log = EventLog()
    reactive.events.subscribe(log)
    for i, q in enumerate(queries):  # all queued before connect: the first turns share one batch
        reactive.submit(Query(f"s{i}", q, OPTS))
        reactive.submit(Query(f"s{i}", "and then?", OPTS))
    reactive.connect()
    assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == 8, timeout=60)
    reactive.dispose()
    for i in range(len(queries)):
        answers = [e.text for e in log.events if isinstance(e, AnswerDone) and e.session_id == f"s{i}"]
        assert answers == sequential[i]


def test_cancel_mid_answer_stops_tokens_and_keeps_memory(runtime):
    reactive, log = runtime
    lane = threading.Event()
    reactive.events.subscribe(lambda e: lane.set() if isinstance(e, Token) else None)
    reactive.connect()
    reactive.session("warm").ask_sync("hello", OPTS)  # session "c" untouched so far
    before = reactive.session_state("c")
    reactive.submit(Query("c", "tell me everything", GenerationOptions(max_new_tokens=100), query_id="q"))
    assert log.wait_for(lambda ev: any(isinstance(e, Token) and e.session_id == "c" for e in ev))
    reactive.submit(Cancel("c"))
    assert log.wait_for(lambda ev: any(isinstance(e, Cancelled) for e in ev))
    assert reactive.wait_idle()
    mine = [e for e in log.events if e.session_id == "c"]
    cancelled_at = next(i for i, e in enumerate(mine) if isinstance(e, Cancelled))
    assert not any(isinstance(e, (Token, AnswerDone, MemoryUpdated)) for e in mine[cancelled_at:])
    tokens = [e for e in mine if isinstance(e, Token)]
    assert len(tokens) < 100
    assert mine[cancelled_at].partial_text == "".join(t.text for t in tokens)
    assert before is None and reactive.session_state("c") is None  # documented: nothing written


def test_failing_subscriber_becomes_error_event_and_stream_lives_on(runtime):
    reactive, log = runtime

    def bad_subscriber(event):
        if isinstance(event, Token):
            raise RuntimeError("subscriber bug")

    reactive.events.subscribe(bad_subscriber)
    reactive.connect()
    text = reactive.session("s").ask_sync("hello", OPTS)
    assert reactive.wait_idle()
    assert log.wait_for(lambda ev: any(isinstance(e, Error) and e.code == "subscriber" for e in ev))
    assert text == next(e.text for e in log.events if isinstance(e, AnswerDone))
    assert reactive.session("s").ask_sync("again", OPTS) is not None


def test_queue_limit_and_too_long_query_are_errors_for_that_session_only():
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_pending_per_session=2)
    log = EventLog()
    reactive.events.subscribe(log)
    for i in range(5):  # not connected yet: they all wait
        reactive.submit(Query("flood", f"q{i}", OPTS))
    reactive.submit(Query("long", "word " * 400, OPTS))
    reactive.submit(Query("calm", "hello", OPTS))
    reactive.connect()
    assert log.wait_for(lambda ev: sum(isinstance(e, MemoryUpdated) for e in ev) == 3, timeout=60)
    errors = [e for e in log.events if isinstance(e, Error)]
    assert sorted(e.code for e in errors if e.session_id == "flood") == ["queue_full"] * 3
    assert "max_pending_per_session=2" in errors[0].message
    assert any(e.code == "too_long" and "max_seq_len=128" in e.message for e in errors if e.session_id == "long")
    reactive.dispose()


def test_reset_returns_session_to_initial_memory(runtime):
    reactive, _log = runtime
    reactive.connect()
    reactive.session("r").ask_sync("remember this", OPTS)
    assert reactive.wait_idle()
    assert reactive.session_state("r").turns == 1
    reactive.submit(Reset("r"))
    assert reactive.wait_idle()
    state = reactive.session_state("r")
    assert state.turns == 0 and state.memory_version == 0
    torch.testing.assert_close(state.stm, reactive.model.initial_memory(1)[:, 0])


async def test_async_facade_streams_and_asks(runtime):
    reactive, _ = runtime
    reactive.connect()
    session = reactive.session("async")
    kinds = [type(e) async for e in session.stream("hello", {"max_new_tokens": 4})]
    assert _kinds_in_order(kinds) == TURN_ORDER
    assert isinstance(await session.ask("again", {"max_new_tokens": 4}), str)


def test_caller_supplied_scheduler_is_used():
    model, tokenizer = tiny_model()
    lane = EventLoopScheduler()
    threads = set()
    reactive = ReactiveModel(model, tokenizer, scheduler=lane)
    reactive.events.subscribe(lambda e: threads.add(threading.current_thread().name))
    reactive.connect()
    reactive.session("x").ask_sync("hi", OPTS)
    reactive.dispose()
    lane.dispose()
    assert len(threads) == 1 and threading.current_thread().name not in threads


def test_events_round_trip_through_dicts_and_messages_validate():
    ev = AnswerDone("s", 2, 7, "q", text="hi", token_ids=(1, 2), stopped_by_eos=True)
    assert event_from_dict(ev.to_dict()) == ev
    with pytest.raises(ValueError, match="unknown"):
        event_from_dict({"type": "nope"})
    with pytest.raises(InvalidMessage, match="options.max_new_tokens: 5000 is outside 1..1024"):
        Query.from_dict({"session": "a", "text": "x", "options": {"max_new_tokens": 5000}})
    with pytest.raises(InvalidMessage, match="session"):
        Query.from_dict({"text": "x"})
    with pytest.raises(InvalidMessage, match="text: must be a string"):
        Query.from_dict({"session": "a", "text": 5})
    with pytest.raises(InvalidMessage, match="session: may contain only"):
        Query("../etc", "x")


@pytest.fixture
def switch_interval():
    import sys

    saved = sys.getswitchinterval()
    yield sys
    sys.setswitchinterval(saved)


def test_connect_shortens_the_gil_switch_interval_never_lengthens_it(switch_interval):
    model, tokenizer = tiny_model()
    switch_interval.setswitchinterval(0.005)
    with pytest.raises(ValueError, match="switch_interval_s=0"):
        ReactiveModel(model, tokenizer, switch_interval_s=0)
    untouched = ReactiveModel(model, tokenizer, switch_interval_s=None)
    untouched.connect()
    assert switch_interval.getswitchinterval() == pytest.approx(0.005)
    untouched.dispose()
    reactive = ReactiveModel(model, tokenizer)
    assert switch_interval.getswitchinterval() == pytest.approx(0.005)  # nothing before connect()
    reactive.connect()
    assert reactive.switch_interval_s < 0.005
    assert switch_interval.getswitchinterval() == pytest.approx(reactive.switch_interval_s)
    reactive.dispose()
    switch_interval.setswitchinterval(0.0001)
    lower = ReactiveModel(model, tokenizer)
    lower.connect()
    assert switch_interval.getswitchinterval() == pytest.approx(0.0001)
    lower.dispose()


def _recorded_runtime():
    """A connected runtime (8 slots) whose launched plans and events are recorded."""
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=8)
    plans = record_plans(reactive)
    log = EventLog()
    reactive.events.subscribe(log)
    reactive.connect()
    return reactive, plans, log


def _submit_together(reactive, queries):
    """Submit ``queries`` while the lane is busy, so they wait together and cross in one lane action."""
    blocked, release = threading.Event(), threading.Event()
    reactive._lane.schedule(lambda *_: (blocked.set(), release.wait(10)))
    assert blocked.wait(10)
    for query in queries:
        reactive.submit(query)
    release.set()


def test_queries_that_arrive_together_are_accepted_at_once_and_prefilled_in_one_step():
    """RxPY's observe_on alone moved one input message onto the lane per decode step (64 queries sent together
    waited up to 64 steps to be accepted); the messages waiting now cross in one lane action."""
    reactive, plans, log = _recorded_runtime()
    try:
        _submit_together(reactive, [Query(f"s{i}", "hello there", GenerationOptions(max_new_tokens=3))
                                    for i in range(6)])
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 6)
        assert [len(p.admit) for p in plans if p.admit] == [6]
    finally:
        reactive.dispose()


def test_update_pass_and_commit_go_in_the_lane_action_that_ends_the_answer():
    """The memory update of an answer runs in the lane action that learns the answer ended (MemoryUpdateStarted
    in the AnswerDone's batch) and its commit is handed over at launch, before that launch is collected: before,
    the pass waited for the next step's plan and the commit for the step after."""
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    calls: list = []
    launch, collect, submit = reactive.executor.launch, reactive.executor.collect, reactive._hand_over
    reactive.executor.launch = lambda plan, stm_of: calls.append(("launch", id(plan), len(plan.updates))) or \
        launch(plan, stm_of)
    reactive.executor.collect = lambda step, *wait: calls.append(("collect", id(step.plan))) or collect(step, *wait)
    # the hand-over: to the lane's in-place commits (the in-process store) or to the commit writer's threads
    reactive._hand_over = lambda commits, ready=None: calls.append(("submit", len(commits))) or \
        submit(commits, ready)
    batches = start_short_and_long(reactive)
    try:
        assert batches.wait_for(lambda bs: sum(isinstance(e, MemoryUpdated) for b in bs for e in b) == 2)
        for sid in ("short", "long"):
            done = next(b for b in batches.events if any(isinstance(e, AnswerDone) and e.session_id == sid for e in b))
            assert any(isinstance(e, MemoryUpdateStarted) and e.session_id == sid for e in done), sid
        passes = [i for i, c in enumerate(calls) if c[0] == "launch" and c[2]]
        assert len(passes) == 2
        for i in passes:
            assert calls[i + 1] == ("submit", 1)  # handed over at launch ...
            assert ("collect", calls[i][1]) in calls[i + 2:]  # ... before its step is collected
    finally:
        reactive.dispose()


def test_sessions_finishing_together_update_in_one_pass_right_after_their_last_token():
    """Sessions whose answers end at the same step update their memory in one pass, launched in the lane action
    that collects their last tokens, with no decode step queued ahead of it: the step after the last one no longer
    feeds them a token to throw away (it is certain to be their last: the length limit), so it is not launched
    at all when nothing else runs. Every session is fed exactly once per answer token."""
    reactive, plans, log = _recorded_runtime()
    try:  # arrive together: one prefill, then every step the same rows
        _submit_together(reactive, [Query(f"s{i}", "hello there", GenerationOptions(max_new_tokens=4))
                                    for i in range(5)])
        assert log.wait_for(lambda es: sum(isinstance(e, MemoryUpdated) for e in es) == 5)
        answers = [e for e in log.events if isinstance(e, AnswerDone)]
        assert len(answers) == 5 and all(len(e.token_ids) == 4 and not e.stopped_by_eos for e in answers)
        passes = [k for k, p in enumerate(plans) if p.updates]
        assert len(passes) == 1 and len(plans[passes[0]].updates) == 5
        fed = sum(len(p.decode) + len(p.admit) for p in plans)
        assert fed == 5 * 4  # one feed per token: none thrown away
        last_feed = max(k for k, p in enumerate(plans) if p.decode or p.admit)
        between = plans[last_feed + 1:passes[0]]
        assert all(not (p.decode or p.admit) for p in between)  # nothing for the device ahead of the pass
        assert sorted(slot for p in between for slot in p.retire) == list(range(5))
    finally:
        reactive.dispose()


def test_in_place_commits_are_saved_on_the_lane_once_their_pass_is_done_in_order():
    """The in-process store saves in place: a pass's commits wait on the lane for its event (never before), leave
    oldest first (a later pass done first waits behind), ``wait`` synchronizes, a failed pass fails its commits
    as store Errors, and dispose saves what is left."""
    from rxnn_runtime.active_turn import ActiveTurn

    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=2)
    store = reactive.store

    def commit(sid):
        turn = ActiveTurn(Query(sid, "q"), 1, [1], phase="committing")
        stm = reactive.sessions.get(sid).stm.clone()
        return [(turn, reactive.sessions.advance(sid, stm, turns=1))]

    try:
        first, second = FakePass(), FakePass()
        reactive._hand_over(commit("a"), first)
        reactive._hand_over(commit("b"), second)
        assert not reactive.commits.pending  # not through the commit writer's threads
        assert reactive._settle(wait=False) == [] and store.load("a") is None
        second.done = True
        assert reactive._settle(wait=False) == [] and store.load("b") is None  # behind "a"
        first.done = True
        events = reactive._settle(wait=False)
        assert [(type(e), e.session_id, e.version) for e in events] == [(MemoryUpdated, "a", 1),
                                                                         (MemoryUpdated, "b", 1)]
        assert store.load("a").memory_version == 1 and store.load("b").memory_version == 1
        third = FakePass()
        reactive._hand_over(commit("c"), third)
        assert [e.session_id for e in reactive._settle(wait=True)] == ["c"] and third.waited == 1
        broken = FakePass(fails=True)
        reactive._hand_over(commit("d"), broken)
        (error,) = reactive._settle(wait=True)
        assert isinstance(error, Error) and error.code == "store" and "device-side assert" in error.message
        assert store.load("d") is None
        left = FakePass()
        reactive._hand_over(commit("e"), left)
    finally:
        reactive.dispose()
    assert left.waited == 1 and store.load("e").memory_version == 1


def test_an_idle_lane_waits_for_the_update_pass_itself_and_update_ms_covers_it():
    """With nothing else to run, the lane waits on the pass's event in an action of its own (no commit thread); the
    MemoryUpdated that follows reports the wait in ``update_ms`` (from the answer's end to the commit)."""
    import time

    class _SlowPass(FakePass):  # done 50 ms after the launch
        def __init__(self):
            super().__init__()
            self.at = time.perf_counter() + 0.05

        def query(self):
            return time.perf_counter() >= self.at

        def synchronize(self):
            self.waited += 1
            time.sleep(max(0.0, self.at - time.perf_counter()))

    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=2)
    passes = []
    launch = reactive.executor.launch

    def slow_launch(plan, stm_of):
        launched = launch(plan, stm_of)
        if plan.updates:
            passes.append(_SlowPass())
            launched.result.memory_ready = passes[-1]
        return launched

    reactive.executor.launch = slow_launch
    log = EventLog()
    reactive.events.subscribe(log)
    reactive.submit(Query("s", "hello", GenerationOptions(max_new_tokens=2)))
    reactive.connect()
    try:
        assert log.wait_for(lambda es: any(isinstance(e, MemoryUpdated) for e in es))
        (updated,) = [e for e in log.events if isinstance(e, MemoryUpdated)]
        assert len(passes) == 1 and passes[0].waited == 1  # waited for on the lane, once
        assert updated.update_ms >= 45 and reactive.store.load("s").memory_version == 1
        assert reactive.wait_idle(10)
    finally:
        reactive.dispose()


def test_a_query_that_arrives_during_a_step_is_admitted_by_the_next_step():
    """While other sessions decode, a query that arrives during a step is accepted at the start of the next step
    and prefilled by it, not by the step after (its own lane action would queue behind the next step)."""
    reactive, plans, log = _recorded_runtime()
    try:
        reactive.submit(Query("long", "hello there", GenerationOptions(max_new_tokens=40)))
        assert log.wait_for(lambda es: sum(isinstance(e, Token) for e in es) >= 3)  # decoding: a step queued
        blocked, release = threading.Event(), threading.Event()
        reactive._lane.schedule(lambda *_: (blocked.set(), release.wait(10)))
        assert blocked.wait(10)
        before = len(plans)
        reactive.submit(Query("late", "hi", GenerationOptions(max_new_tokens=2)))
        release.set()
        assert log.wait_for(lambda es: any(isinstance(e, MemoryUpdated) and e.session_id == "late" for e in es))
        admitted = next(k for k, p in enumerate(plans) if any(t.session_id == "late" for t in p.admit))
        assert admitted == before, (admitted, before)  # the first step after the query arrived
        accepted = next(e for e in log.events if isinstance(e, QueryAccepted) and e.session_id == "late")
        assert accepted.seq < next(e.seq for e in log.events if isinstance(e, Token) and e.session_id == "late")
    finally:
        reactive.dispose()
