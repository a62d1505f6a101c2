"""The turn scheduler: which turns run in the next step. Torch-free, touched only on the model lane.

It owns the waiting queues (one per session), the decode slots, admission, cancellation and the stop rule, and
knows nothing of tensors (the vLLM v1 split: scheduler here, `ModelExecutor` on the device):

    plan = scheduler.schedule()                       # release, memory updates, decode rows, admissions
    launched = executor.launch(plan, ...)             # one batched step on the device (not waited for)
    scheduler.memory_written(launched.result)         # the pass's turns go to the store at once
    result = executor.collect(launched)               # its tokens, once the next step is launched
    events = scheduler.update_from_output(plan, result)
    updates = scheduler.schedule_updates()            # the turns that just finished answering: updated now

Rules:
- A session runs one turn at a time: from admission until its memory update is committed (saved) it is busy,
  so its next turn always reads the committed memory.
- Admission is fair across sessions: among sessions with a waiting turn, the one served longest ago goes first
  (a session moves to the back of the order when one of its turns is admitted). Slots are taken lowest first,
  which keeps the live rows in a small decode bucket.
- A primed interaction (`Prime`) needs no slot: it joins the step's memory-update pass, one per session per step.
  A session's next primed interaction need not wait for the previous one's save (the STM on the device already
  holds it), so the primes of sessions that prime together share every pass; an answer turn or a Reset does wait.
- A Reset waits behind the session's in-flight turn (its answer is out and will be committed first), then
  returns the session to its initial memory.
- Pipelined (the runtime schedules step N+1 before it collects step N), a turn whose token in flight is certain
  to be its last (length limit or cache room) is not fed again: its slot is retired (`StepPlan.retire`) and
  freed once that token is collected.
- Cancel drops waiting turns and stops a running one at once (its partial answer is never written to memory);
  an answered turn is past cancelling.
"""

from __future__ import annotations

import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rxnn_runtime.active_turn import ActiveTurn
from rxt.events import (
    AnswerDone,
    Cancelled,
    Error,
    Event,
    MemoryUpdated,
    MemoryUpdateStarted,
    QueryAccepted,
    token_event,
)
from rxt.stopping import StopRule


@dataclass
class StepPlan:
    release: list[int] = field(default_factory=list)  # slots to free first (their turns ended)
    updates: list[ActiveTurn] = field(default_factory=list)  # one batched memory-update pass
    decode: list[ActiveTurn] = field(default_factory=list)  # running turns: feed their last token
    retire: list[int] = field(default_factory=list)  # slots whose token in flight is certainly their turn's last
    admit: list[ActiveTurn] = field(default_factory=list)  # waiting turns given a slot: prefilled together
    resets: list[ActiveTurn] = field(default_factory=list)  # sessions returning to their initial memory

    @property
    def empty(self) -> bool:
        return not (self.release or self.retire or self.updates or self.decode or self.admit or self.resets)


@dataclass
class StepResult:
    """What the executor did: a token per decoded/admitted turn, failures by turn (the step went on without them)."""

    tokens: dict[ActiveTurn, tuple[int, float | None]] = field(default_factory=dict)
    new_memory: dict[ActiveTurn, Any] = field(default_factory=dict)  # turn -> its new STM (device), to commit
    memory_ready: Any = None  # on CUDA: an event recorded right after the update pass that wrote ``new_memory``
    failures: list[tuple[ActiveTurn, str, str]] = field(default_factory=list)  # (turn, code, message)


class TurnScheduler:
    def __init__(
        self,
        *,
        max_slots: int,
        capacity: int,
        eos_id: int,
        decode_text: Callable[[list[int]], str],
        max_pending_per_session: int = 8,
        seq: Iterator[int] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """``clock`` (seconds) times each turn's memory update, from the answer's end to its commit
        (`MemoryUpdated.update_ms`)."""
        if max_slots < 1:
            raise ValueError(f"max_slots={max_slots} must be >= 1")
        if max_pending_per_session < 1:
            raise ValueError(f"max_pending_per_session={max_pending_per_session} must be >= 1")
        self.max_slots = max_slots
        self.capacity = capacity
        self.eos_id = eos_id
        self.decode_text = decode_text
        self.max_pending_per_session = max_pending_per_session
        self.seq = seq or itertools.count(1)
        self.clock = clock
        self._pending: OrderedDict[str, deque[ActiveTurn]] = OrderedDict()  # order = admission fairness
        self._busy: dict[str, ActiveTurn] = {}  # session -> its turn in flight (admitted .. committed)
        self._saving: dict[str, int] = {}  # session -> primed interactions written on the device, not yet saved
        self._running: dict[int, ActiveTurn] = {}  # slot -> turn decoding in it
        self._free = list(range(max_slots))  # kept sorted: lowest slot first
        self._release: list[int] = []
        self._answered: list[ActiveTurn] = []  # waiting for the next memory-update pass
        self._next_turn: dict[str, int] = {}

    # -- events ---------------------------------------------------------------------------------------------
    def event(self, cls: type[Event], session_id: str, turn_id: int, query_id: str | int = "", **fields) -> Event:
        return cls(session_id=session_id, turn_id=turn_id, seq=next(self.seq), query_id=query_id, **fields)

    def _turn_event(self, cls: type[Event], turn: ActiveTurn, **fields) -> Event:
        return self.event(cls, turn.session_id, turn.turn_id, turn.query_id, **fields)

    # -- intake ---------------------------------------------------------------------------------------------
    def waiting(self, session_id: str) -> int:
        return len(self._pending.get(session_id, ()))

    def is_busy(self, session_id: str) -> bool:
        return session_id in self._busy

    def knows(self, session_id: str) -> bool:
        """The session has a turn waiting or in flight (its cached state must stay)."""
        return session_id in self._busy or session_id in self._saving or bool(self._pending.get(session_id))

    def next_turn_id(self, session_id: str, committed_turns: int) -> int:
        """Turn numbers: committed turns + 1, then one more per turn accepted since (cancelled ones included)."""
        turn_id = self._next_turn.get(session_id, committed_turns + 1)
        self._next_turn[session_id] = turn_id + 1
        return turn_id

    def add(self, turn: ActiveTurn) -> list[Event]:
        """Queue ``turn``; an answer turn is announced with QueryAccepted. A full queue is an Error instead."""
        sid = turn.session_id
        queue = self._pending.setdefault(sid, deque())
        if turn.kind == "answer" and len(queue) >= self.max_pending_per_session:
            return [self.event(Error, sid, 0, turn.query_id, code="queue_full",
                               message=f"session {sid} has {len(queue)} waiting queries (limit "
                               f"max_pending_per_session={self.max_pending_per_session})")]
        queue.append(turn)
        if turn.kind == "answer":
            return [self._turn_event(QueryAccepted, turn, text=turn.query.text)]
        return []

    # -- the step -------------------------------------------------------------------------------------------
    def schedule_updates(self) -> StepPlan:
        """A plan of the memory-update pass alone, for the turns that finished answering since the last plan.

        The runtime runs it in the lane action that learned the answers ended (behind the step it launched), not
        in the next step's plan: one step less between an answer and its commit. Slots are released by the next
        `schedule`."""
        plan = StepPlan(updates=self._answered)
        self._answered = []
        for turn in plan.updates:
            turn.phase = "updating"
        return plan

    def schedule(self) -> StepPlan:
        plan = self.schedule_updates()
        plan.release, self._release = self._release, []
        self._free = sorted(self._free + plan.release)
        plan.decode = self._decode_rows(plan.retire)
        for sid in list(self._pending):
            queue = self._pending[sid]
            if not queue:
                del self._pending[sid]
                continue
            head = queue[0]
            if sid in self._busy or (head.kind != "prime" and sid in self._saving):
                continue
            if head.kind == "answer":
                if not self._free:
                    continue  # no slot: primes and resets of other sessions may still go
                head.slot = self._free.pop(0)
                head.phase = "running"
                head.in_flight = 1
                self._running[head.slot] = head
                plan.admit.append(head)
            elif head.kind == "prime":
                head.phase = "updating"
                head.update_from = self.clock()
                plan.updates.append(head)
            else:
                head.phase = "committing"
                head.update_from = self.clock()
                plan.resets.append(head)
            queue.popleft()
            self._busy[sid] = head
            self._pending.move_to_end(sid)  # served: the others go first next time
            if not queue:
                del self._pending[sid]
        return plan

    def _decode_rows(self, retire: list[int]) -> list[ActiveTurn]:
        """The running turns to feed in the next step. A turn whose token still in flight (the step launched before
        this one is collected after it) is certain to end it, by its length limit or its cache row's room, is not
        fed: the runtime would throw the extra token away, and the device would spend a step on it before the
        turn's memory-update pass. Its slot goes to ``retire`` (the executor stops feeding it at once); the
        scheduler frees it once that last token is collected. Without a token in flight (a caller that collects
        each plan before the next) every running turn is fed."""
        rows = []
        capacity = self.capacity
        for turn in self._running.values():
            if turn.in_flight:
                rule = turn.stop_rule
                if rule is None:
                    rule = turn.stop_rule = StopRule(self.eos_id, turn.query.options.max_new_tokens)
                length = len(turn.answer) + turn.in_flight  # answer tokens once the tokens in flight are in
                if rule.ends_by_length(length, capacity - len(turn.prompt) - length):
                    if not turn.retired:
                        turn.retired = True
                        retire.append(turn.slot)
                    continue
            turn.in_flight += 1
            rows.append(turn)
        return rows

    def started_events(self, plan: StepPlan) -> list[Event]:
        """MemoryUpdateStarted for the answered turns of ``plan``'s update pass (sent before the pass runs)."""
        return [self._turn_event(MemoryUpdateStarted, t) for t in plan.updates if t.kind == "answer"]

    def memory_written(self, result: StepResult) -> list[ActiveTurn]:
        """The turns whose new memory ``result`` holds (written on the device, not failed) now go to the store:
        returns them. Called as soon as the pass is launched, before their commit is handed over, so a commit
        acknowledged early (`committed`) always finds its turn committing; `update_from_output` calls it again
        for callers that do not, and a turn is moved on once only."""
        failed = {turn for turn, _, _ in result.failures}
        written = []
        for turn in result.new_memory:
            if turn in failed or turn.phase != "updating":
                continue
            written.append(turn)
            turn.phase = "committing"  # an answer keeps its session busy until `committed`
            if turn.kind == "prime":  # the next prime may go on; answers and resets wait for the save
                self._busy.pop(turn.session_id, None)
                self._saving[turn.session_id] = self._saving.get(turn.session_id, 0) + 1
        return written

    def update_from_output(self, plan: StepPlan, result: StepResult) -> list[Event]:
        """The step's events, in one list: a Token per running turn (an AnswerDone after it where it stopped),
        Errors for failed turns. Runs for every step with a token per running row, so the per-token path makes
        one event and appends it, nothing more (`_take_token`)."""
        events: list[Event] = []
        failed = {turn for turn, _, _ in result.failures}
        for turn, code, message in result.failures:
            self._end(turn)
            events.append(self._turn_event(Error, turn, code=code, message=message))
        self.memory_written(result)
        tokens = result.tokens
        take = self._take_token
        for turn in (*plan.decode, *plan.admit):
            if turn.phase != "running" or turn in failed:
                continue  # cancelled while the step ran, or failed
            token, log_prob = tokens[turn]
            take(turn, token, log_prob, events)
        return events

    def _take_token(self, turn: ActiveTurn, token: int, log_prob: float | None, events: list[Event]) -> None:
        """``turn``'s next token: its Token event (and AnswerDone when the stop rule ends the turn) onto ``events``."""
        turn.in_flight -= 1
        if log_prob is not None:
            turn.log_probs.append(log_prob)
        rule = turn.stop_rule
        if rule is None:
            rule = turn.stop_rule = StopRule(self.eos_id, turn.query.options.max_new_tokens)
        answer = turn.answer
        if token != self.eos_id:
            answer.append(token)
            query = turn.query
            events.append(token_event(query.session_id, turn.turn_id, next(self.seq), query.query_id,
                                      len(answer) - 1, token, turn.text_decoder.decode_token(token)))
        room = self.capacity - len(turn.prompt) - len(answer)  # cache positions left to feed this token
        stop = rule.check(token, len(answer), room)
        if stop is not None:
            turn.stopped_by_eos = stop == "eos"
            turn.phase = "answered"
            turn.update_from = self.clock()  # the answer is complete: its memory update's time starts
            self._running.pop(turn.slot, None)
            self._release.append(turn.slot)
            self._answered.append(turn)  # its memory update: `schedule_updates`, right after this output
            events.append(self._turn_event(
                AnswerDone, turn, text=self.decode_text(turn.answer), token_ids=tuple(turn.answer),
                stopped_by_eos=turn.stopped_by_eos, log_probs=tuple(turn.log_probs), tail=turn.text_decoder.flush(),
            ))

    def committed(self, turn: ActiveTurn, version: int, error: str | None = None) -> list[Event]:
        """The turn's memory is saved (or saving failed): the session is free for its next turn."""
        self._end(turn)
        if turn.kind == "prime":
            left = self._saving.pop(turn.session_id, 1) - 1
            if left > 0:
                self._saving[turn.session_id] = left
        if error is not None:
            return [self._turn_event(Error, turn, code="store", message=error)]
        update_ms = None if turn.update_from is None else (self.clock() - turn.update_from) * 1e3
        return [self._turn_event(MemoryUpdated, turn, version=version, update_ms=update_ms)]

    def _end(self, turn: ActiveTurn) -> None:
        turn.phase = "done"
        if self._running.get(turn.slot) is turn:
            del self._running[turn.slot]
            self._release.append(turn.slot)
        if self._busy.get(turn.session_id) is turn:
            del self._busy[turn.session_id]

    # -- control --------------------------------------------------------------------------------------------
    def cancel(self, session_id: str, query_id: str | int = "") -> list[Event]:
        """Drop the session's waiting turns (all, or those of ``query_id``) and stop its running one. Ids match
        as given: "" means every turn, while 0 is an id like any other (and never equals "0")."""
        every = isinstance(query_id, str) and query_id == ""
        events: list[Event] = []
        queue = self._pending.get(session_id)
        if queue:
            for turn in [t for t in queue if every or _same_id(t.query_id, query_id)]:
                if turn.kind == "reset":
                    continue
                queue.remove(turn)
                turn.phase = "done"
                if turn.kind == "answer":
                    events.append(self._turn_event(Cancelled, turn))
        turn = self._busy.get(session_id)
        if turn is not None and turn.phase == "running" and (every or _same_id(turn.query_id, query_id)):
            self._end(turn)
            events.append(self._turn_event(Cancelled, turn, partial_text=self.decode_text(turn.answer)))
        return events

    def reset(self, reset_turn: ActiveTurn) -> list[Event]:
        """Cancel everything of the session, then queue ``reset_turn`` (applied once the session is idle)."""
        sid = reset_turn.session_id
        events = self.cancel(sid)
        self._pending.setdefault(sid, deque()).append(reset_turn)
        self._next_turn[sid] = 1
        return events

    def has_work(self) -> bool:
        """Whether another step would do anything (slots live, releases or updates due, admissible turns)."""
        if self._running or self._answered or self._release:
            return True
        return any(q and sid not in self._busy and (q[0].kind == "prime" or sid not in self._saving)
                   for sid, q in self._pending.items())

    def idle(self) -> bool:
        return not (self._running or self._answered or self._release or self._busy or self._saving
                    or any(self._pending.values()))

    def depth(self) -> dict[str, int]:
        """Queue depth for health reports: turns waiting for a slot, turns decoding, sessions with a turn in flight."""
        return {"queued_turns": sum(len(queue) for queue in self._pending.values()),
                "running_turns": len(self._running), "busy_sessions": len(self._busy)}

    def forget(self, session_id: str) -> None:
        """Drop the per-session counters of an idle session (bounded maps: the cache evicted it)."""
        if not self.knows(session_id):
            self._next_turn.pop(session_id, None)
            self._pending.pop(session_id, None)


def _same_id(a: str | int, b: str | int) -> bool:
    """Query ids are equal when type and value are: the integer 1 is not the string "1" (nor True)."""
    return type(a) is type(b) and a == b
