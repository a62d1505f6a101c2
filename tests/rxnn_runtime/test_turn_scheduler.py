"""The torch-free turn scheduler on its own: admission order, fairness, the stop rule, cancel at every stage."""

import subprocess
import sys

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.turn_scheduler import StepResult, TurnScheduler
from rxt.events import AnswerDone, Cancelled, Error, MemoryUpdated, QueryAccepted, Token

EOS = 2


class _Text:
    """Stands in for the tokenizer's incremental decoder: token t reads as "<t>"."""

    def decode_token(self, token):
        return f"<{token}>"

    def flush(self):
        return ""


def _scheduler(slots=2, **kw):
    return TurnScheduler(max_slots=slots, capacity=kw.pop("capacity", 64), eos_id=EOS,
                         decode_text=lambda ids: "".join(f"<{t}>" for t in ids), **kw)


def _turn(s, sid, qid="", max_new=4, prompt=(1, 5, 6), kind="answer"):
    query = Query(sid, "q", GenerationOptions(max_new_tokens=max_new), query_id=qid)
    return ActiveTurn(query, s.next_turn_id(sid, 0), list(prompt), kind=kind, text_decoder=_Text())


def _step(s, token_of=lambda turn: 7):
    """One scheduler round with a fake executor that answers ``token_of(turn)`` for every row."""
    plan = s.schedule()
    result = StepResult()
    for turn in (*plan.decode, *plan.admit):
        result.tokens[turn] = (token_of(turn), None)
    for turn in plan.updates:
        result.new_memory[turn] = object()
    return plan, s.update_from_output(plan, result)


def test_scheduler_module_does_not_import_torch():
    code = ("import sys; import rxnn_runtime.turn_scheduler, rxnn_runtime.active_turn, rxt.stopping, rxt.events; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_admission_is_fifo_lowest_slot_first_and_one_turn_per_session():
    s = _scheduler(slots=2)
    turns = [_turn(s, "a", "a1"), _turn(s, "a", "a2"), _turn(s, "b", "b1"), _turn(s, "c", "c1")]
    events = [e for t in turns for e in s.add(t)]
    assert [type(e) for e in events] == [QueryAccepted] * 4
    assert [e.turn_id for e in events] == [1, 2, 1, 1]
    plan = s.schedule()
    assert [(t.query_id, t.slot) for t in plan.admit] == [("a1", 0), ("b1", 1)]  # a2 waits: a is busy
    assert not plan.decode and not plan.updates


def test_fairness_sessions_served_longest_ago_go_first():
    s = _scheduler(slots=1)
    for sid in ("a", "b", "c"):
        for k in range(2):
            s.add(_turn(s, sid, f"{sid}{k}", max_new=1))
    served = []
    for _ in range(40):
        plan, _events = _step(s)
        served += [t.query_id for t in plan.admit]
        for t in plan.updates:  # commit at once
            s.committed(t, 1)
        if s.idle():
            break
    # One slot: a, b, c each get their first turn before anyone gets a second.
    assert served == ["a0", "b0", "c0", "a1", "b1", "c1"]


def test_stop_rule_eos_and_length_and_room():
    s = _scheduler(slots=3, capacity=8)
    eos_turn, length_turn, room_turn = _turn(s, "e", max_new=5), _turn(s, "l", max_new=2), \
        _turn(s, "r", max_new=50, prompt=(1, 2, 3, 4, 5))
    for t in (eos_turn, length_turn, room_turn):
        s.add(t)
    tokens = {"e": [7, EOS], "l": [7, 8, 9], "r": [7] * 10}
    seen: dict[str, list] = {"e": [], "l": [], "r": []}
    for _ in range(10):
        _, events = _step(s, lambda turn: tokens[turn.session_id][len(turn.answer)])
        for e in events:
            seen[e.session_id].append(e)
    done = {sid: next(e for e in ev if isinstance(e, AnswerDone)) for sid, ev in seen.items()}
    assert done["e"].token_ids == (7,) and done["e"].stopped_by_eos
    assert done["l"].token_ids == (7, 8) and not done["l"].stopped_by_eos
    # capacity 8, prompt 5: the row holds the prompt and 2 fed tokens, so the answer stops at 3 tokens.
    assert done["r"].token_ids == (7, 7, 7) and not done["r"].stopped_by_eos
    assert all(sum(isinstance(e, Token) for e in seen[sid]) == len(done[sid].token_ids) for sid in seen)


def test_cancel_at_every_stage():
    s = _scheduler(slots=1)
    running, waiting, other = _turn(s, "a", "run", max_new=10), _turn(s, "a", "wait"), _turn(s, "b", "b")
    for t in (running, waiting, other):
        s.add(t)
    _step(s)  # "run" admitted, holds the only slot
    assert running.phase == "running"
    events = s.cancel("a", "wait")  # a waiting turn: dropped
    assert [(type(e), e.query_id) for e in events] == [(Cancelled, "wait")]
    events = s.cancel("a")  # the running turn: stopped, partial text reported, slot freed
    assert [(type(e), e.query_id, e.partial_text) for e in events] == [(Cancelled, "run", "<7>")]
    plan, _ = _step(s)
    assert plan.release == [0] and [t.query_id for t in plan.admit] == ["b"]  # the slot goes to b
    # b answers (max_new=4); once answered it is past cancelling: its memory will be committed.
    answered = []
    for _ in range(3):  # the first token came with the prefill
        plan, events = _step(s)
        answered += [e for e in events if isinstance(e, AnswerDone)]
    assert [e.token_ids for e in answered] == [(7, 7, 7, 7)]
    assert s.cancel("b") == []
    plan, _ = _step(s)
    assert [t.query_id for t in plan.updates] == ["b"]
    assert [type(e) for e in s.committed(other, 1)] == [MemoryUpdated]
    assert s.idle()


def test_reset_waits_for_the_answered_turn_and_cancels_the_rest():
    s = _scheduler(slots=1)
    first, second = _turn(s, "a", "1", max_new=1), _turn(s, "a", "2")
    s.add(first)
    s.add(second)
    _, events = _step(s)
    assert any(isinstance(e, AnswerDone) for e in events)
    reset = ActiveTurn(Query("a", ""), 0, [], kind="reset")
    events = s.reset(reset)
    assert [(type(e), e.query_id) for e in events] == [(Cancelled, "2")]
    plan, _ = _step(s)
    assert plan.updates == [first] and not plan.resets  # the answered turn commits first
    s.committed(first, 1)
    plan = s.schedule()
    assert plan.resets == [reset]
    s.committed(reset, 0)
    assert s.idle() and s.next_turn_id("a", 0) == 1


def test_primes_take_no_slot_one_per_session_per_step_and_cancel():
    s = _scheduler(slots=1)
    for _k in range(3):
        s.add(_turn(s, "p", "hist", kind="prime"))
    s.add(_turn(s, "q", "ask"))
    plan = s.schedule()
    assert [t.kind for t in plan.updates] == ["prime"] and [t.query_id for t in plan.admit] == ["ask"]
    events = s.cancel("p", "hist")  # the two primes not yet written are dropped, silently
    assert events == [] and s.waiting("p") == 0


def test_queue_limit_is_an_error_naming_the_limit():
    s = _scheduler(max_pending_per_session=1)
    s.add(_turn(s, "a"))
    events = s.add(_turn(s, "a"))
    assert isinstance(events[0], Error) and events[0].code == "queue_full"
    assert "max_pending_per_session=1" in events[0].message


def test_failed_turn_frees_its_session_and_slot():
    s = _scheduler(slots=1)
    turn = _turn(s, "a")
    s.add(turn)
    plan = s.schedule()
    events = s.update_from_output(plan, StepResult(failures=[(turn, "internal", "boom")]))
    assert [(type(e), e.code) for e in events] == [(Error, "internal")]
    assert not s.is_busy("a") and s.schedule().release == [0]



def test_update_pass_right_after_the_answer_and_a_commit_acknowledged_before_collect():
    """`schedule_updates` gives the turns that just finished answering (no waiting for the next plan), and
    `memory_written` moves them on at launch: a commit acknowledged before the step is collected (the writer is
    fast) leaves the session free and nothing half-done, for answers and primes alike."""
    s = _scheduler(slots=2)
    answer, prime = _turn(s, "a", "1", max_new=1), _turn(s, "p", "h", kind="prime")
    s.add(answer)
    s.add(prime)
    plan, events = _step(s)  # "1" admitted and answered by its first token; the prime went in this plan's pass
    assert [t.query_id for t in plan.updates] == ["h"] and any(isinstance(e, AnswerDone) for e in events)
    updates = s.schedule_updates()
    assert updates.updates == [answer] and answer.phase == "updating" and not updates.decode
    assert s.schedule_updates().empty  # taken once
    result = StepResult(new_memory={answer: object()})
    assert s.memory_written(result) == [answer] and answer.phase == "committing"
    assert s.memory_written(result) == []  # once only
    assert [type(e) for e in s.committed(answer, 1)] == [MemoryUpdated]
    assert s.update_from_output(updates, result) == []  # the late collect changes nothing
    assert answer.phase == "done" and not s.is_busy("a")
    s.committed(prime, 1)
    assert s.schedule().release == [0] and s.idle()  # the answer's slot goes back with the next plan


def test_failed_update_is_not_written():
    s = _scheduler(slots=1)
    turn = _turn(s, "a", max_new=1)
    s.add(turn)
    _step(s)
    updates = s.schedule_updates()
    result = StepResult(new_memory={}, failures=[(turn, "memory_update", "boom")])
    assert s.memory_written(result) == []
    events = s.update_from_output(updates, result)
    assert [(type(e), e.code) for e in events] == [(Error, "memory_update")]
    assert not s.is_busy("a") and s.idle() is False  # its slot is released by the next plan
    assert s.schedule().release == [0] and s.idle()


def _pipelined(s, steps=40):
    """Rounds as the runtime runs them: plan k+1 is scheduled before plan k's tokens are collected (every row
    answers token 7). Returns the plans and the events."""
    plans, events = [], []
    inflight = None
    for _ in range(steps):
        plan = s.schedule()
        plans.append(plan)
        if inflight is not None:
            result = StepResult()
            for turn in (*inflight.decode, *inflight.admit):
                result.tokens[turn] = (7, None)
            events += s.update_from_output(inflight, result)
            for turn in s.schedule_updates().updates:
                s.committed(turn, 1)
        inflight = plan
        if s.idle():
            break
    return plans, events


def test_a_turn_whose_token_in_flight_is_its_last_is_not_fed_again():
    """Pipelined, the turn's last token is still in flight when the next plan is made: a turn that token ends (its
    length limit, or its cache row's room) is retired instead of fed, so it is fed exactly once per token."""
    s = _scheduler(slots=3, capacity=8)
    s.add(_turn(s, "a", max_new=3))
    s.add(_turn(s, "b", max_new=5))
    s.add(_turn(s, "c", max_new=30))  # prompt of 3 in a row of 8: room for 5 tokens
    plans, events = _pipelined(s)
    answers = {e.session_id: e.token_ids for e in events if isinstance(e, AnswerDone)}
    assert {sid: len(ids) for sid, ids in answers.items()} == {"a": 3, "b": 5, "c": 5}
    for sid, tokens in (("a", 3), ("b", 5), ("c", 5)):
        fed = [k for k, p in enumerate(plans) if any(t.session_id == sid for t in (*p.decode, *p.admit))]
        assert len(fed) == tokens, sid  # was one more: the thrown-away token after the last
        slot = next(t.slot for t in plans[0].admit if t.session_id == sid)
        retired = [k for k, p in enumerate(plans) if slot in p.retire]
        assert retired == [fed[-1] + 1], sid  # the plan after its last feed retires its slot, once
        released = [k for k, p in enumerate(plans) if slot in p.release]
        assert released == [fed[-1] + 2], sid  # ... and the slot is free once that last token is collected


def test_collecting_each_plan_first_feeds_every_running_turn():
    """Without a token in flight (each plan collected before the next) nothing is retired: a turn ending at its
    length limit gets all its tokens."""
    s = _scheduler(slots=1)
    s.add(_turn(s, "a", max_new=3))
    plans = []
    for _ in range(6):
        plan, _events = _step(s)
        plans.append(plan)
    assert sum(len(p.decode) + len(p.admit) for p in plans) == 3
    assert not any(p.retire for p in plans)


class _Clock:
    """A settable clock (seconds) for the scheduler's update timing."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_memory_updated_times_the_update_from_the_answer_end_to_the_commit():
    """``update_ms``: from the step whose token ended the answer (not from the query, nor from the update's launch)
    to the commit; for a prime and a reset from the plan that applied them; never part of equality."""
    clock = _Clock()
    s = _scheduler(slots=2, clock=clock)
    answer, prime = _turn(s, "a", "1", max_new=2), _turn(s, "p", "h", kind="prime")
    s.add(answer)
    s.add(prime)
    _step(s)  # "a": first token; the prime's pass is applied now (t = 100)
    clock.now = 100.5
    _, events = _step(s)  # "a": second token ends it (t = 100.5)
    assert any(isinstance(e, AnswerDone) for e in events)
    clock.now = 100.501  # its update pass is launched a little later: not where the time starts
    s.schedule_updates()
    clock.now = 100.5035
    [done] = s.committed(answer, 1)
    assert isinstance(done, MemoryUpdated) and abs(done.update_ms - 3.5) < 1e-9
    assert done == MemoryUpdated(session_id="a", turn_id=done.turn_id, seq=done.seq, query_id="1", version=1)
    clock.now = 100.002
    [primed] = s.committed(prime, 1)
    assert abs(primed.update_ms - 2.0) < 1e-9
    reset = ActiveTurn(Query("a", ""), 0, [], kind="reset")
    s.reset(reset)
    clock.now = 200.0
    assert s.schedule().resets == [reset]
    clock.now = 200.001
    [after_reset] = s.committed(reset, 0)
    assert after_reset.turn_id == 0 and abs(after_reset.update_ms - 1.0) < 1e-6
