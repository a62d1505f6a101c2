"""Where a turn's time to first token and its memory update go inside the server: per-turn timestamps, by phase.

`TurnTimeline.install(reactive)` wraps a few methods of one running `ReactiveModel` (and the websocket
connections' event sink) to stamp each turn, keyed by (session, query id), with `time.perf_counter()` as it passes:

    submitted      the loop hands the parsed query to the model (websocket frame read and checked)
    accepted       the lane turned it into a turn (`TurnIntake.query`)
    admitted       a plan gave it a slot (`TurnScheduler.schedule`): prefilled in that step
    first_lane     its first token became an event on the lane (`update_from_output`, the step after its prefill)
    first_loop     that event reached its connection on the loop (`Connection._on_events`), to be written
    answered       its last token became an event on the lane (AnswerDone)
    update_launch  its memory-update pass is being launched (`ModelExecutor._update_memory`)
    pass_done      the pass truly done on the device: a thread of the timeline's own waits on the pass's event
                   (CUDA; the GIL let go, so the stamp may be late by up to one switch interval)
    device_done    the pass seen done on the device: by the lane, for commits saved in place
                   (`InPlaceCommits._save`), or by a commit worker (`CommitWriter._stms_to_save`)
    committed      the lane announced it (`TurnScheduler.committed`: MemoryUpdated made)
    updated_loop   MemoryUpdated reached its connection on the loop

`summary()` gives the median and p90 of each phase (the difference of consecutive stamps, per turn, in ms).
Stamping costs a dict write per stamp, a few per turn, nothing per token; `undo()` puts every method back.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import defaultdict
from typing import Any

from bench_utils import Patches

from rxnn_runtime.events import AnswerDone, MemoryUpdated, Token
from rxnn_runtime.messages import Query
from rxnn_runtime.server import websocket

PHASES = (  # (name, from stamp, to stamp)
    ("loop -> lane: query accepted", "submitted", "accepted"),
    ("accepted -> admitted (slot, step)", "accepted", "admitted"),
    ("admitted -> first token on the lane", "admitted", "first_lane"),
    ("first token: lane -> its connection", "first_lane", "first_loop"),
    ("server TTFT (submitted -> first token at its connection)", "submitted", "first_loop"),
    ("answer end -> update pass launched", "answered", "update_launch"),
    ("update launch -> done on the device (as seen)", "update_launch", "device_done"),
    ("update launch -> done on the device (true)", "update_launch", "pass_done"),
    ("done on the device (true) -> seen", "pass_done", "device_done"),
    ("device done -> committed on the lane", "device_done", "committed"),
    ("server update (answer end -> committed)", "answered", "committed"),
    ("committed -> memory_updated at its connection", "committed", "updated_loop"),
)


class TurnTimeline:
    def __init__(self) -> None:
        self.stamps: dict[tuple[str, Any], dict[str, float]] = defaultdict(dict)
        self._patches = Patches()

    def _stamp(self, session_id: str, query_id: Any, name: str, now: float | None = None) -> None:
        # the first stamp of a name wins (a turn passes each point once; an id reused by a later turn is not)
        self.stamps[(session_id, query_id)].setdefault(name, time.perf_counter() if now is None else now)

    def _wrap(self, owner: Any, name: str, after) -> None:
        """Replace ``owner.name`` by a call of the original followed by ``after(result, *args)``."""
        original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            try:
                after(result, *args)
            except Exception:  # a timeline bug must never change what the server does
                pass
            return result

        self._patches.replace(owner, name, wrapped, original)

    def install(self, reactive: Any) -> None:
        stamp = self._stamp
        submit = reactive.submit

        def submitted(message):
            if isinstance(message, Query):
                stamp(message.session_id, message.query_id, "submitted")
            return submit(message)

        self._patches.replace(reactive, "submit", submitted, submit)
        self._wrap(reactive.intake, "query",
                   lambda _r, query, *_: stamp(query.session_id, query.query_id, "accepted"))

        def scheduled(plan, *_):
            for turn in plan.admit:
                stamp(turn.session_id, turn.query_id, "admitted")

        self._wrap(reactive.scheduler, "schedule", scheduled)

        self._wrap(reactive.scheduler, "update_from_output",
                   lambda events, *_: self._stamp_events(events, "first_lane", AnswerDone, "answered"))
        update = reactive.executor._update_memory

        def launching(turns, stm_of, result):
            now = time.perf_counter()
            for turn in turns:
                stamp(turn.session_id, turn.query_id, "update_launch", now)
            out = update(turns, stm_of, result)
            ready = result.memory_ready
            if ready is not None:  # when the pass is truly done: a thread waits on its event (GIL let go)
                keys = [(turn.session_id, turn.query_id) for turn in turns]
                threading.Thread(target=self._wait_done, args=(ready, keys), daemon=True).start()
            return out

        self._patches.replace(reactive.executor, "_update_memory", launching, update)

        def device_done(_result, job, *_):
            now = time.perf_counter()
            for turn, _state in job:
                stamp(turn.session_id, turn.query_id, "device_done", now)

        self._wrap(reactive.commits, "_stms_to_save", device_done)  # commits through the writer's threads
        in_place = reactive._in_place  # `InPlaceCommits`: commits saved in place
        save_in_place = in_place._save

        def lane_sees_done(commits, ready):  # commits saved in place: the lane waits for the pass, then saves
            if ready is not None:
                ready.synchronize()  # at once when the lane found it done (that is when it calls)
            device_done(None, commits)
            return save_in_place(commits, ready)

        self._patches.replace(in_place, "_save", lane_sees_done, save_in_place)

        def committed(_events, turn, *_):
            stamp(turn.session_id, turn.query_id, "committed")

        self._wrap(reactive.scheduler, "committed", committed)

        self._wrap(websocket.Connection, "_on_events",
                   lambda _result, _connection, events: self._stamp_events(events, "first_loop", MemoryUpdated,
                                                                           "updated_loop"))

    def _wait_done(self, ready: Any, keys: list[tuple[str, Any]]) -> None:
        ready.synchronize()
        now = time.perf_counter()
        for session_id, query_id in keys:
            self._stamp(session_id, query_id, "pass_done", now)

    def _stamp_events(self, events, first: str, cls: type, name: str) -> None:
        """Stamp ``first`` on each turn whose first token is among ``events``, ``name`` on each event of ``cls``."""
        now = time.perf_counter()
        for event in events:
            if type(event) is Token and event.index == 0:
                self._stamp(event.session_id, event.query_id, first, now)
            elif type(event) is cls:
                self._stamp(event.session_id, event.query_id, name, now)

    def undo(self) -> None:
        self._patches.undo()

    def reset(self) -> None:
        self.stamps.clear()

    def summary(self) -> dict[str, dict[str, float]]:
        """Per phase: ``{"median_ms", "p90_ms", "turns"}`` over the turns that have both stamps."""
        out = {}
        for label, start, end in PHASES:
            values = sorted((s[end] - s[start]) * 1e3 for s in self.stamps.values() if start in s and end in s)
            if values:
                out[label] = {"median_ms": statistics.median(values),
                              "p90_ms": values[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))],
                              "turns": len(values)}
        return out


__all__ = ["PHASES", "TurnTimeline"]
