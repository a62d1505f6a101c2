"""The model as a connectable Observable of events.

    queries ──► input: Subject ──► [lane: one EventLoopScheduler] ──► Token* AnswerDone ─┐
                                                                                        ▼
    events: ConnectableObservable ◄── MemoryUpdated(version) ◄── [memory-update stage, on the lane]

Everything that touches weights or STM runs on the lane, one action at a time, so no locks guard model state
and events leave in one total order (``seq``). Messages pushed into `input` from any thread are only
scheduled onto the lane. Nothing flows before `connect()`: queries sent earlier wait.

Turns decode in the slots of a `DecodeEngine` (continuous batching): all live turns advance one token per lane
action, and between steps finished turns leave and waiting turns of other sessions join, so a long answer
never holds up short ones. Cancellations are handled between steps too. A session with a turn in flight
(answering or updating memory) is busy: its next query waits, so it always reads the committed memory. The
memory update is its own lane action, scheduled once the turn's AnswerDone has been emitted; turns that finish
close together share one batched update.

Cancellation: a waiting turn is dropped; a running turn stops at the next step. A cancelled turn's partial
answer is **not** written to memory and its turn id is not committed.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict, deque
from typing import Any

import torch
from reactivex import abc
from reactivex.disposable import Disposable
from reactivex.observable.connectableobservable import ConnectableObservable
from reactivex.scheduler import EventLoopScheduler
from reactivex.subject import Subject

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.events import (
    AnswerDone,
    Cancelled,
    Error,
    Event,
    MemoryUpdated,
    MemoryUpdateStarted,
    QueryAccepted,
    Token,
)
from rxnn_runtime.isolating_subject import IsolatingSubject
from rxnn_runtime.messages import Cancel, InvalidMessage, Query, Reset
from rxnn_runtime.stores import InMemoryStore, SessionState, SessionStore
from rxt.decode_engine import DecodeEngine
from rxt.model import RxT
from rxt.sampling import choose_tokens
from rxt.template import InteractionTemplate, pad_batch
from rxt.tokenizer import RxTokenizer

log = logging.getLogger(__name__)


class ReactiveModel:
    def __init__(
        self,
        model: RxT,
        tokenizer: RxTokenizer,
        *,
        store: SessionStore | None = None,
        scheduler: abc.SchedulerBase | None = None,
        max_batch_size: int = 32,
        max_pending_per_session: int = 8,
        session_cache_size: int = 1024,
        use_cuda_graphs: bool | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1")
        if max_pending_per_session < 1:
            raise ValueError(f"max_pending_per_session={max_pending_per_session} must be >= 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = InteractionTemplate(tokenizer)
        self.store = store or InMemoryStore()
        self.max_batch_size = max_batch_size
        self.max_pending_per_session = max_pending_per_session
        self._lane = scheduler or EventLoopScheduler()
        self._owns_lane = scheduler is None
        self._out: Subject = Subject()
        self.events = ConnectableObservable(self._out, IsolatingSubject(self._on_subscriber_error))
        self.input: Subject = Subject()
        self._input_subscription = self.input.subscribe(on_next=self._on_input)
        self._seq = itertools.count(1)
        self._connected = False
        self._disposed = False
        self._connection: abc.DisposableBase | None = None
        # Lane-only state (touched only by lane actions: no locks needed).
        self._sessions: OrderedDict[str, SessionState] = OrderedDict()
        self._session_cache_size = session_cache_size
        self._pending: dict[str, deque[tuple[Query, int]]] = {}
        self._next_turn: dict[str, int] = {}
        self._busy: set[str] = set()
        self._turns: dict[int, ActiveTurn] = {}  # decode slot -> the turn answering in it
        self._updates: list[ActiveTurn] = []  # answered turns waiting for the memory-update stage
        self._drain_scheduled = False
        self._step_scheduled = False
        # Decode slots with a static KV cache; each step is a captured CUDA graph on the GPU (see DecodeEngine).
        self.engine = DecodeEngine(self.model.decoder, max_slots=max_batch_size, capacity=model.config.max_seq_len,
                                   use_cuda_graphs=use_cuda_graphs)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def connect(self) -> abc.DisposableBase:
        """Start the stream: events flow to subscribers and waiting queries are served."""
        if self._disposed:
            raise RuntimeError("ReactiveModel is disposed")
        if self._connection is None:
            self._connection = self.events.connect()
            self._schedule(self._set_connected)
        return Disposable(self.dispose)

    def dispose(self) -> None:
        """Stop cleanly: running turns end, the lane stops. Committed sessions are already in the store."""
        if self._disposed:
            return
        self._disposed = True
        self._input_subscription.dispose()
        if self._connection is not None:
            self._connection.dispose()
        if self._owns_lane:
            self._lane.dispose()

    def submit(self, message: Query | Cancel | Reset) -> None:
        """Same as ``input.on_next(message)``."""
        self.input.on_next(message)

    def prime(self, session_id: str, interactions: list[tuple[str, str]], *, query_id: str = "") -> None:
        """Write earlier (query, answer) turns into a session's memory, in order, on the lane.

        Used when a client brings its own history (e.g. an OpenAI-style request without a session). Emits one
        MemoryUpdated per interaction, carrying ``query_id``; the session's later queries wait for it.
        """
        Query(session_id, "", query_id=query_id)  # validates the session id and query id
        items = [(str(q), str(a)) for q, a in interactions]
        self._schedule(lambda: self._prime(session_id, items, query_id))

    def session(self, session_id: str):
        """A `ReactiveSession` facade (``await s.ask(text)``, ``async for e in s.stream(text)``, ``ask_sync``)."""
        from rxnn_runtime.session import ReactiveSession

        return ReactiveSession(self, session_id)

    # -- lane plumbing ---------------------------------------------------------------------------------------
    def _schedule(self, action) -> None:
        if self._disposed:
            return

        def run(_scheduler: Any, _state: Any = None) -> None:
            try:
                action()
            except Exception:
                log.exception("lane action failed")

        self._lane.schedule(run)

    def _emit(self, event_type: type[Event], session_id: str, turn_id: int, query_id: str = "", **fields) -> None:
        self._out.on_next(event_type(session_id=session_id, turn_id=turn_id, seq=next(self._seq), query_id=query_id,
                                     **fields))

    def _on_subscriber_error(self, event: Any, exc: BaseException) -> None:
        if isinstance(event, Error):
            return  # never loop on a subscriber that fails on errors too
        session = getattr(event, "session_id", "")
        turn = getattr(event, "turn_id", 0)
        self._schedule(lambda: self._emit(Error, session, turn, code="subscriber", message=repr(exc)))

    def _set_connected(self) -> None:
        self._connected = True
        self._request_drain()

    def _on_input(self, message: Any) -> None:
        if isinstance(message, Query):
            self._schedule(lambda: self._accept(message))
        elif isinstance(message, Cancel):
            self._schedule(lambda: self._cancel(message))
        elif isinstance(message, Reset):
            self._schedule(lambda: self._reset(message))
        else:
            self._schedule(
                lambda: self._emit(Error, "", 0, code="invalid", message=f"unsupported input {type(message).__name__}")
            )

    # -- sessions --------------------------------------------------------------------------------------------
    def _session(self, session_id: str) -> SessionState:
        state = self._sessions.get(session_id)
        if state is None:
            state = self.store.load(session_id)
            if state is None:
                stm = self.model.initial_memory(1)[:, 0].detach().cpu()
                state = SessionState(session_id=session_id, stm=stm)
            self.model.stm.validate(state.stm.unsqueeze(1))
            self._sessions[session_id] = state
            while len(self._sessions) > self._session_cache_size:
                oldest = next(iter(self._sessions))
                if oldest in self._busy or oldest == session_id:
                    break
                self._sessions.pop(oldest)  # already saved: the store has it
        self._sessions.move_to_end(session_id)
        return state

    def session_state(self, session_id: str) -> SessionState | None:
        """The committed state of a session (from the store; safe from any thread)."""
        return self.store.load(session_id)

    # -- lane actions ----------------------------------------------------------------------------------------
    def _accept(self, query: Query) -> None:
        sid = query.session_id
        try:
            state = self._session(sid)
        except Exception as exc:
            self._emit(Error, sid, 0, query.query_id, code="session", message=str(exc))
            return
        queue = self._pending.setdefault(sid, deque())
        if len(queue) >= self.max_pending_per_session:
            self._emit(
                Error, sid, 0, query.query_id, code="queue_full",
                message=f"session {sid} has {len(queue)} waiting queries (limit max_pending_per_session="
                f"{self.max_pending_per_session})",
            )
            return
        prompt = self.template.query_ids(query.text)
        limit = self.model.config.max_seq_len - query.options.max_new_tokens
        if len(prompt) > limit:
            self._emit(
                Error, sid, 0, query.query_id, code="too_long",
                message=f"text is {len(prompt)} tokens; with options.max_new_tokens={query.options.max_new_tokens} "
                f"the limit is {limit} (max_seq_len={self.model.config.max_seq_len})",
            )
            return
        turn_id = self._next_turn.get(sid, state.turns + 1)
        self._next_turn[sid] = turn_id + 1
        queue.append((query, turn_id))
        self._emit(QueryAccepted, sid, turn_id, query.query_id, text=query.text)
        self._request_drain()

    def _request_drain(self) -> None:
        if not self._drain_scheduled:
            self._drain_scheduled = True
            self._schedule(self._drain)

    def _drain(self) -> None:
        """Admit waiting turns of idle sessions into free decode slots (continuous batching)."""
        self._drain_scheduled = False
        if not self._connected:
            return
        for sid, queue in list(self._pending.items()):
            if not queue or sid in self._busy:
                continue
            slot = self.engine.free_slot()
            if slot is None:
                break  # full: admitted when a slot frees up
            query, turn_id = queue.popleft()
            self._busy.add(sid)
            try:
                self._start_turn(slot, query, turn_id)
            except Exception as exc:
                log.exception("could not start turn %s/%s", sid, turn_id)
                if self.engine.live[slot]:
                    self.engine.release(slot)
                self._turns.pop(slot, None)
                self._busy.discard(sid)
                self._emit(Error, sid, turn_id, query.query_id, code="internal", message=repr(exc))
        if self._turns:
            self._request_step()

    def _start_turn(self, slot: int, query: Query, turn_id: int) -> None:
        device = self.model.embedding.weight.device
        turn = ActiveTurn(
            query, turn_id, self.template.query_ids(query.text), self.tokenizer.incremental_decoder(),
            slot=slot, sampling=query.options.sampling(return_log_probs=query.options.return_log_probs),
        )
        turn.generator = turn.sampling.generator(device)
        turn.stm = self._session(query.session_id).stm
        # The memory K/V projection (once per turn) and the prefill run together; one CUDA graph on the GPU.
        logits = self.engine.start(slot, torch.tensor(turn.prompt, device=device), stm=turn.stm.to(device))
        self._turns[slot] = turn
        self._take_token(turn, logits[None])

    def _request_step(self) -> None:
        if not self._step_scheduled:
            self._step_scheduled = True
            self._schedule(self._step)

    def _step(self) -> None:
        """One decode step for every live slot; sessions join and leave between steps."""
        self._step_scheduled = False
        if not self._turns:
            return
        bucket = self.engine.bucket()
        tokens = torch.full((bucket,), self.tokenizer.pad_id, dtype=torch.long)
        for slot, turn in self._turns.items():
            tokens[slot] = turn.next_token
        try:
            logits = self.engine.step(tokens.to(self.engine.device))
        except Exception as exc:
            log.exception("decode step failed")
            for turn in list(self._turns.values()):
                self._end_turn(turn, cancelled=True)
                self._emit(Error, turn.session_id, turn.turn_id, turn.query.query_id, code="internal",
                           message=repr(exc))
            self._request_drain()
            return
        greedy = logits.argmax(dim=-1).tolist() if any(t.sampling.greedy for t in self._turns.values()) else None
        for slot, turn in list(self._turns.items()):
            self._take_token(turn, logits[slot : slot + 1], greedy[slot] if greedy and turn.sampling.greedy else None)
        self._drain()  # admit waiting sessions into the slots just freed

    def _take_token(self, turn: ActiveTurn, logits: torch.Tensor, greedy_token: int | None = None) -> None:
        """Choose the turn's next token from its (1, V) logits, emit it, and end the turn when it is done."""
        if greedy_token is not None and not turn.sampling.return_log_probs:
            token = greedy_token
        else:
            chosen, log_probs = choose_tokens(logits, turn.sampling, turn.generator)
            token = int(chosen[0])
            if log_probs is not None:
                turn.log_probs.append(float(log_probs[0]))
        if token == self.tokenizer.eos_id:
            turn.stopped_by_eos = True
            self._finish_answer(turn)
            return
        turn.answer.append(token)
        turn.next_token = token
        self._emit(Token, turn.session_id, turn.turn_id, turn.query.query_id, index=len(turn.answer) - 1,
                   token_id=token, text=turn.text_decoder.decode_token(token))
        if len(turn.answer) >= turn.query.options.max_new_tokens or self.engine.room(turn.slot) < 1:
            self._finish_answer(turn)

    def _end_turn(self, turn: ActiveTurn, *, cancelled: bool) -> None:
        turn.done = True
        turn.cancelled = cancelled
        if self._turns.get(turn.slot) is turn:
            self._turns.pop(turn.slot)
            self.engine.release(turn.slot)
        if cancelled:
            self._busy.discard(turn.session_id)

    def _finish_answer(self, turn: ActiveTurn) -> None:
        self._end_turn(turn, cancelled=False)
        self._emit(AnswerDone, turn.session_id, turn.turn_id, turn.query.query_id,
                   text=self.tokenizer.decode(turn.answer), token_ids=tuple(turn.answer),
                   stopped_by_eos=turn.stopped_by_eos, log_probs=tuple(turn.log_probs),
                   tail=turn.text_decoder.flush())
        # The memory update is its own lane action, after the answer has been delivered. Turns finishing
        # close together share one batched encoder + memory-attention pass.
        self._updates.append(turn)
        if len(self._updates) == 1:
            self._schedule(self._update_memory)

    def _update_memory(self) -> None:
        turns, self._updates = self._updates, []
        try:
            if turns:
                for turn in turns:
                    self._emit(MemoryUpdateStarted, turn.session_id, turn.turn_id, turn.query.query_id)
                max_len = self.model.config.max_seq_len
                interactions = [[*t.prompt, *self._memory_answer(t), self.tokenizer.eos_id][:max_len] for t in turns]
                ids, lengths = pad_batch(interactions, self.tokenizer.pad_id)
                device = self.model.embedding.weight.device
                valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
                stm = torch.stack([t.stm for t in turns], dim=1).to(device)
                with torch.no_grad():
                    new_stm = self.model.update_memory(stm, ids.to(device), valid.to(device)).cpu()
                for i, turn in enumerate(turns):
                    self._commit(turn, new_stm[:, i])
        except Exception as exc:
            log.exception("memory update failed")
            for turn in turns:
                self._emit(Error, turn.session_id, turn.turn_id, turn.query.query_id, code="memory_update",
                           message=repr(exc))
        finally:
            for turn in turns:
                self._busy.discard(turn.session_id)
            self._request_drain()

    def _memory_answer(self, turn: ActiveTurn) -> list[int]:
        """What is written to memory: the generated answer, or the given one under teacher forcing."""
        if turn.query.memory_answer is not None:
            return self.tokenizer.encode(turn.query.memory_answer)
        return turn.answer

    def _commit(self, turn: ActiveTurn, stm: torch.Tensor) -> None:
        state = self._session(turn.session_id)
        new_state = SessionState(
            session_id=state.session_id, stm=stm.clone(), turns=turn.turn_id,  # the number the client was sent
            memory_version=state.memory_version + 1, metadata=state.metadata,
        )
        try:
            self.store.save(new_state)  # committed == saved, before anyone hears MemoryUpdated
        except Exception as exc:
            self._emit(Error, turn.session_id, turn.turn_id, turn.query.query_id, code="store", message=repr(exc))
            return
        self._sessions[turn.session_id] = new_state
        self._emit(MemoryUpdated, turn.session_id, turn.turn_id, turn.query.query_id, version=new_state.memory_version)

    def _prime(self, sid: str, interactions: list[tuple[str, str]], query_id: str) -> None:
        if sid in self._busy or self._pending.get(sid):
            # Rare: history sent for a session that is mid-turn. Try again after the lane has moved on.
            self._schedule(lambda: self._prime(sid, interactions, query_id))
            return
        state = self._session(sid)
        device = self.model.embedding.weight.device
        max_len = self.model.config.max_seq_len
        for query, answer in interactions:
            ids = self.template.interaction_ids(query, answer)[:max_len]
            with torch.no_grad():
                stm = self.model.update_memory(state.stm.unsqueeze(1).to(device), torch.tensor([ids], device=device))
            state = SessionState(sid, stm[:, 0].cpu(), state.turns + 1, state.memory_version + 1, state.metadata)
            self.store.save(state)
            self._sessions[sid] = state
            self._next_turn[sid] = max(self._next_turn.get(sid, 0), state.turns + 1)
            self._emit(MemoryUpdated, sid, state.turns, query_id, version=state.memory_version)

    def _cancel(self, message: Cancel) -> None:
        sid = message.session_id
        queue = self._pending.get(sid, deque())
        for entry in list(queue):
            query, turn_id = entry
            if not message.query_id or message.query_id == query.query_id:
                queue.remove(entry)
                self._emit(Cancelled, sid, turn_id, query.query_id)
        for turn in list(self._turns.values()):
            matches = not message.query_id or message.query_id == turn.query.query_id
            if turn.session_id == sid and matches:
                self._end_turn(turn, cancelled=True)
                self._emit(Cancelled, sid, turn.turn_id, turn.query.query_id,
                           partial_text=self.tokenizer.decode(turn.answer))
        self._request_drain()

    def _reset(self, message: Reset) -> None:
        sid = message.session_id
        self._cancel(Cancel(sid))
        stm = self.model.initial_memory(1)[:, 0].detach().cpu()
        state = SessionState(session_id=sid, stm=stm)
        try:
            self.store.save(state)
        except Exception as exc:
            self._emit(Error, sid, 0, code="store", message=repr(exc))
            return
        self._sessions[sid] = state
        self._next_turn.pop(sid, None)
        self._emit(MemoryUpdated, sid, 0, version=0)

    # -- testing and shutdown helpers ------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until no turn is waiting or running (for tests, scripts and graceful shutdown)."""
        done = threading.Event()

        def check() -> None:
            if not self._turns and not self._updates and not self._busy and not any(self._pending.values()):
                done.set()
            elif not self._disposed:
                self._schedule(check)

        self._schedule(check)
        return done.wait(timeout)


__all__ = ["InvalidMessage", "ReactiveModel"]
