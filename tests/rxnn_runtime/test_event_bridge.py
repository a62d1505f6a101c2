"""Event batches leave the lane once per step and fan out per session at the asyncio edge."""

import asyncio

from runtime_helpers import EventLog, tiny_model

from rxnn_runtime.event_bridge import EventBridge, EventQueue
from rxnn_runtime.events import MemoryUpdated, Token
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.reactive_model import ReactiveModel

OPTS = GenerationOptions(max_new_tokens=5)


def test_one_step_is_one_batch_with_every_sessions_token():
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    batches = EventLog()
    reactive.batches.subscribe(batches)
    for i in range(3):
        reactive.submit(Query(f"s{i}", "hello there", OPTS))
    reactive.connect()
    try:
        assert batches.wait_for(lambda bs: sum(isinstance(e, MemoryUpdated) for b in bs for e in b) == 3)
        token_batches = [b for b in batches.events if any(isinstance(e, Token) for e in b)]
        # Admitted together, the three sessions decode in lockstep: each step's tokens travel as one tuple.
        assert any(len({e.session_id for e in b if isinstance(e, Token)}) == 3 for b in token_batches)
        seqs = [e.seq for b in batches.events for e in b]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    finally:
        reactive.dispose()


async def test_bridge_fans_out_per_session_and_lets_go_when_the_last_listener_leaves():
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    reactive.connect()
    try:
        bridge = EventBridge.of(reactive)
        assert EventBridge.of(reactive) is bridge  # one bridge per (model, loop)
        a = EventQueue(bridge.turn_events("a", "qa"))
        b = EventQueue(bridge.session_events("b"))
        reactive.submit(Query("a", "hi", OPTS, query_id="qa"))
        reactive.submit(Query("b", "hi", OPTS, query_id="qb"))
        got_a = [e async for e in a]  # ends with the turn's terminal event (take_while inclusive)
        assert isinstance(got_a[-1], MemoryUpdated) and {e.session_id for e in got_a} == {"a"}
        got_b = []
        while not got_b or not isinstance(got_b[-1], MemoryUpdated):
            got_b.append(await asyncio.wait_for(b.__anext__(), 20))
        assert {e.session_id for e in got_b} == {"b"}
        assert bridge._subscription is not None
        b.close()
        assert bridge._subscription is None  # nothing left listening on the lane
    finally:
        reactive.dispose()


async def test_bridge_resubscribes_cleanly_while_events_keep_flowing():
    """Each ask() subscribes and lets go; with another session decoding all the while, a tick lost with a
    disposed subscription must never leave the next subscription waiting."""
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4)
    reactive.connect()
    try:
        for i in range(20):  # background traffic: batches arrive while listeners come and go
            reactive.submit(Query("noise", f"tell me more {i}", GenerationOptions(max_new_tokens=20)))
        session = reactive.session("asker")
        for i in range(6):
            assert isinstance(await asyncio.wait_for(session.ask(f"question {i}", {"max_new_tokens": 3}), 20), str)
        assert EventBridge.of(reactive)._subscription is None
    finally:
        reactive.dispose()


async def test_a_sink_gets_one_list_per_drain_for_all_its_sessions_in_seq_order():
    """The batched fan-out: a sink listening to two sessions (a websocket connection owning both) gets one call
    per drain with its events of every waiting batch, interleaved in seq order; other sessions' events never."""
    from reactivex.subject import Subject

    class _Model:
        batches = Subject()

    bridge = EventBridge(_Model(), asyncio.get_running_loop())
    calls: list[list] = []

    class _Sink:  # one bound method for both sessions, as `Connection._on_events`
        def on_events(self, events):
            calls.append(events)

    sink = _Sink()
    stop_a, stop_b = bridge.listen("a", sink.on_events), bridge.listen("b", sink.on_events)
    single = []
    stop_c = bridge.session_events("a").subscribe(on_next=single.append)
    steps = [tuple(Token(sid, 1, seq, "", index=seq, token_id=seq) for seq, sid in zip(range(k, k + 3), "abc",
                                                                                        strict=True))
             for k in (1, 4)]
    bridge._dispatch(steps)
    assert len(calls) == 1 and [(e.session_id, e.seq) for e in calls[0]] == [("a", 1), ("b", 2), ("a", 4), ("b", 5)]
    assert [e.seq for e in single] == [1, 4]  # session_events: the same fan-out, one event at a time
    stop_a.dispose()

    def broken(events):
        raise RuntimeError("a listener bug")

    stop_broken = bridge.listen("a", broken)  # called before the two-session sink: that one still gets its list
    bridge._dispatch(steps)
    assert [(e.session_id, e.seq) for e in calls[1]] == [("b", 2), ("b", 5)]
    assert [e.seq for e in single] == [1, 4, 1, 4]
    stop_broken.dispose()
    stop_b.dispose()
    stop_c.dispose()
    assert bridge._subscription is None


def test_batches_that_wake_the_loop_at_once():
    """Batches with a turn's terminal event (what a client waits for before its next query) cross at once; tokens
    and answers wait for the loop's next poll."""
    from rxnn_runtime.event_bridge import _urgent
    from rxnn_runtime.events import AnswerDone, Cancelled, Error, MemoryUpdated, Token

    def token(index):
        return Token(session_id="s", turn_id=1, seq=index + 1, index=index)

    assert not _urgent((token(0), token(4)))
    assert not _urgent((token(5), AnswerDone(session_id="s", turn_id=1, seq=9)))
    assert _urgent((token(3), MemoryUpdated(session_id="s", turn_id=1, seq=10)))
    assert _urgent((Cancelled(session_id="s", turn_id=1, seq=11),))
    assert _urgent((token(2), Error(session_id="s", turn_id=1, seq=12, code="store", message="x")))


def test_polls_are_spaced_by_the_drains_cost_within_their_bounds(monkeypatch):
    """A light load is polled every POLL_S; a drain that takes long (many connections' frames) puts the next poll
    POLL_LOAD_FACTOR times its duration later, never later than POLL_MAX_S."""
    from rxnn_runtime import event_bridge

    monkeypatch.setattr(event_bridge, "POLL_S", 0.001)
    monkeypatch.setattr(event_bridge, "POLL_MAX_S", 0.003)
    monkeypatch.setattr(event_bridge, "POLL_LOAD_FACTOR", 3.0)
    assert event_bridge.poll_delay(0.0) == 0.001
    assert event_bridge.poll_delay(0.0002) == 0.001  # 0.6 ms: below the floor
    assert abs(event_bridge.poll_delay(0.0005) - 0.0015) < 1e-12
    assert event_bridge.poll_delay(0.01) == 0.003  # capped


async def test_the_next_poll_waits_by_the_last_drains_duration(monkeypatch):
    """The bridge times each dispatch (its sinks' work included) in the loop thread's CPU time and schedules the
    next poll from it."""
    from reactivex.subject import Subject

    from rxnn_runtime import event_bridge

    class _Model:
        batches = Subject()

    loop = asyncio.get_running_loop()
    bridge = EventBridge(_Model(), loop)
    clock = iter([10.0, 10.0008])  # the dispatch starts at 10 s and ends 0.8 ms later
    monkeypatch.setattr(event_bridge.time, "thread_time", lambda: next(clock))
    got = []
    stop = bridge.listen("a", got.append)
    bridge._dispatch([(Token("a", 1, 1, "", index=0, token_id=5),)])
    assert len(got) == 1 and abs(bridge._last_drain_s - 0.0008) < 1e-12
    delays = []
    monkeypatch.setattr(loop, "call_later", lambda delay, callback: delays.append(delay))
    bridge._poll_later(lambda: None)
    assert len(delays) == 1 and abs(delays[0] - event_bridge.poll_delay(0.0008)) < 1e-9
    assert delays[0] > event_bridge.POLL_S
    stop.dispose()
