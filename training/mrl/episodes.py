"""MRL episodes collected through the runtime's event graph, and their msgpack log files.

An episode is one session of a `ReactiveModel`::

    S_init ──prime(first q, first a)──► S_0 ──q_1 → a_1, write I_1──► S_1 ── ... ──q_N → a_N, write I_N──► S_N

The first interaction is written with `ReactiveModel.prime`; every follow-up query is a `Query` (with
``memory_answer`` = the dataset answer under teacher forcing, so the memory writes the reference interaction).
The sessions of a batch run together, so the runtime batches their prefills, decode steps and memory updates.
A dataset episode's queries do not depend on its answers, so every session's queries are queued at once (the
runtime keeps them waiting until the session's previous turn is committed, and the collector tops the queue up
as answers finish): no session waits for the slowest one of its turn (``pipelined=False`` is the earlier
turn-by-turn path with a barrier after each turn, kept as the reference). A subscriber on ``reactive.batches``
(the event graph's events, one tuple per lane action) collects each turn's `AnswerDone` (token ids, text and the
runtime's plain-softmax log-probs) and, as each turn's `MemoryUpdated` passes on the lane, takes the committed
STM from the runtime's session cache (the device tensor itself; the turn-by-turn path reads ``session_state``), so
every step records the STM its decoder read (``stm_before``) and the STM after its own write (``stm_after``).

Random resets: an episode starts from the initial memory with probability ``reset_prob``; otherwise it starts
from the final STM of the previous episode collected in the same batch slot (``EpisodeLog.reset`` says which;
``EpisodeLog.stm_initial`` is the STM before the first interaction either way).

Log files (`save_episode_logs` / `load_episode_logs`): a stream of msgpack maps, a header
``{"format": "rxnn-mrl-episodes", "version": 1, "count": N}`` then one map per episode; tensors are
``{"dtype", "shape", "data": raw bytes}``. Files are written atomically (temp file, fsync, rename). A truncated
file or a record that does not match the schema raises `EpisodeLogError` naming the record index and the field.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import torch

from rxnn_runtime.events import AnswerDone, Cancelled, Error, MemoryUpdated
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.stores import SessionState
from rxt.atomic_io import atomic_write_bytes
from training.data.records import EpisodeRecord

FORMAT = "rxnn-mrl-episodes"
VERSION = 1


class EpisodeLogError(ValueError):
    """An episode log file that is truncated or does not match the schema; names the record and the field."""


@dataclass
class StepLog:
    """One follow-up turn of an episode.

    ``prompt_ids`` is the generation prompt ``[BOS][Q] query [A]``; ``action_ids`` the tokens the policy chose,
    ``[EOS]`` included when the answer stopped on it (one runtime log-prob per action token); ``answer_ids`` the
    answer without ``[EOS]``; ``memory_ids`` the interaction written to memory after the turn (the generated or,
    under teacher forcing, the reference answer).
    """

    query: str
    reference: str
    prompt_ids: list[int]
    action_ids: list[int]
    answer_ids: list[int]
    answer_text: str
    memory_ids: list[int]
    reference_ids: list[int]
    runtime_log_probs: list[float]
    stm_before: torch.Tensor  # (L, S, D): the committed STM the decoder read
    stm_after: torch.Tensor  # (L, S, D): after this turn's memory write
    reward: float | None = None


@dataclass
class EpisodeLog:
    episode_id: str
    first_query: str
    first_answer: str
    first_ids: list[int]  # the first interaction, as written to memory
    stm_initial: torch.Tensor  # (L, S, D): before the first interaction
    steps: list[StepLog]
    reset: bool = True
    teacher_forcing: bool = False
    strategy: str = "long_range"
    metadata: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ collection


class _Collector:
    """Subscribes to the events; lets the trainer wait for a set of (session, query id) turns.

    With ``reactive`` given (the pipelined collection) it also reads each turn's committed STM as its
    `MemoryUpdated` passes (on the lane, in the action that frees the session, so the store still holds exactly
    that turn's state) and submits a session's next query from ``queued`` whenever one of its queued messages
    has left the runtime's waiting queue (an answer is done, the first interaction is committed), so the queue
    stays as full as `ReactiveModel.max_pending_per_session` allows."""

    def __init__(self, reactive: Any = None) -> None:
        self.cond = threading.Condition()
        self.answers: dict[tuple[str, str], AnswerDone] = {}
        self.committed: set[tuple[str, str]] = set()
        self.errors: dict[tuple[str, str], str] = {}
        self.reactive = reactive
        self.stms: dict[tuple[str, str], torch.Tensor] = {}
        self.queued: dict[str, deque[Query]] = {}
        self._submit_lock = threading.Lock()
        self._waiting: set[tuple[str, str]] = set()  # the keys `wait` waits for and that are not settled yet
        self._settled_count = 0

    def submit_next(self, sid: str) -> None:
        """Submit ``sid``'s next queued query, if any (from any thread; the lock keeps each session's order)."""
        with self._submit_lock:
            queue = self.queued.get(sid)
            if queue:
                self.reactive.submit(queue.popleft())

    def on_batch(self, events: Sequence[Any]) -> None:
        """One lane action's events (`ReactiveModel.batches`), in order."""
        for event in events:
            if type(event) in _SETTLING:
                self.on_next(event)

    def on_next(self, event: Any) -> None:
        kind = type(event)
        if kind not in _SETTLING:  # a Token (one per generated token per session): nothing to record
            return
        key = (event.session_id, event.query_id)
        if kind is MemoryUpdated and self.reactive is not None:
            self.stms[key] = _lane_stm(self.reactive, event.session_id)
        with self.cond:
            if kind is AnswerDone:
                self.answers[key] = event
            elif kind is MemoryUpdated:
                self.committed.add(key)
                self._settled(key)
            else:
                self.errors[key] = getattr(event, "message", "") or kind.__name__
                self._settled(key)
            self.cond.notify_all()
        if self.reactive is not None and (kind is AnswerDone or key[1] == "first"):
            self.submit_next(event.session_id)  # a query or the primed interaction left the session's queue

    def _settled(self, key: tuple[str, str]) -> None:
        """Count ``key`` as settled (under ``cond``) when `wait` waits for it: the waiter then compares a count
        instead of scanning every key it waits for at each wake-up."""
        if key in self._waiting:
            self._waiting.discard(key)
            self._settled_count += 1

    def wait(self, keys: Sequence[tuple[str, str]], timeout: float) -> None:
        """Until every turn of ``keys`` is committed or one of them failed; `TimeoutError` once ``timeout``
        seconds pass without any of them being committed."""
        with self.cond:
            self._waiting = {k for k in keys if k not in self.committed and k not in self.errors}
            self._settled_count = len(set(keys)) - len(self._waiting)
            total = len(set(keys))
            count, deadline = self._settled_count, time.monotonic() + timeout
            while self._settled_count < total and not any(k in self.errors for k in keys):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [k for k in keys if k not in self.committed and k not in self.errors]
                    raise TimeoutError(f"MRL collection: no MemoryUpdated after {timeout}s for turns {missing[:4]}")
                self.cond.wait(left)
                if self._settled_count > count:
                    count, deadline = self._settled_count, time.monotonic() + timeout
            self._waiting = set()
            errors = [(k, self.errors[k]) for k in keys if k in self.errors]
        if errors:
            (sid, qid), message = errors[0]
            raise RuntimeError(f"MRL collection: turn {qid!r} of session {sid!r} failed: {message}")


_SETTLING = (AnswerDone, MemoryUpdated, Error, Cancelled)  # the events the collector records


def _lane_stm(reactive: Any, sid: str) -> torch.Tensor:
    """The STM ``sid`` just committed, read on the lane (where the `MemoryUpdated` is delivered) from the runtime's
    session cache: the very tensor the runtime committed, where it is (on the GPU: on the device), not a host copy
    through the store, which waited for every step queued on the device and copied 1.5 MB a turn (nano) while the
    lane, and so every session, waited. Nothing writes into a committed STM again (updates are out of place), so it
    is kept without a copy; `float` copies only a model of another dtype."""
    return reactive.sessions.get(sid).stm.detach().float()


def _committed_stm(reactive: Any, sid: str) -> torch.Tensor:
    state = reactive.session_state(sid)
    if state is None:
        raise RuntimeError(f"MRL collection: session {sid!r} has no committed state")
    return state.stm.detach().clone().float()


def collect_episodes(
    reactive: Any,
    episodes: Sequence[EpisodeRecord],
    *,
    options: GenerationOptions | None = None,
    teacher_forcing: bool = False,
    reset_prob: float = 1.0,
    generator: random.Random | None = None,
    max_steps: int | None = None,
    strategy: str = "long_range",
    timeout: float = 300.0,
    pipelined: bool = True,
) -> list[EpisodeLog]:
    """Run ``episodes`` as sessions of ``reactive`` (batches of ``reactive.max_batch_size``) and log every step.

    Args:
        options: generation options of the follow-up queries (``return_log_probs`` is forced on).
        teacher_forcing: write the dataset answer to memory instead of the generated one.
        reset_prob: chance that an episode starts from the initial memory instead of carrying over the final
            STM of the previous episode of its batch slot (the first batch always starts fresh).
        generator: the RNG of the reset draws and of the per-turn sampling seeds (default ``random.Random(0)``),
            so a seeded collection is reproducible.
        max_steps: keep at most this many follow-up turns per episode (the curriculum's step count).
        timeout: seconds without any turn of the batch committed before `TimeoutError`.
        pipelined: queue every session's queries at once (up to ``max_pending_per_session`` waiting, topped up
            as answers finish) instead of one turn of all sessions, then a barrier (``False``, the earlier path,
            kept as the reference). The queries of a dataset episode do not depend on the answers, so a session
            moves to its next turn as soon as its memory is committed: sessions are admitted, decoded and
            memory-updated in groups instead of one per runtime step behind the slowest session of the turn.
            Both draw the same reset and seed values from ``generator`` in the same order, so the rollouts are
            the same (up to the floating-point effect of a different batch composition).
    """
    if not 0.0 <= reset_prob <= 1.0:
        raise ValueError(f"reset_prob={reset_prob} must be in [0, 1]")
    options = options or GenerationOptions(max_new_tokens=32, temperature=1.0)
    options = GenerationOptions(**{**options.__dict__, "return_log_probs": True})
    rng = generator or random.Random(0)
    template, tokenizer = reactive.template, reactive.tokenizer
    max_len = reactive.model.config.max_seq_len
    collector = _Collector(reactive if pipelined else None)
    # the per-step batches of the event graph (one tuple per lane action), not the flattened stream: one delivery
    # a step instead of one per event (a Token per session per step, which the collector skips)
    subscription = reactive.batches.subscribe(on_next=collector.on_batch)
    if not pipelined:
        reactive.connect()
    run = uuid.uuid4().hex[:12]
    logs: list[EpisodeLog] = []
    carry: list[torch.Tensor | None] = [None] * reactive.max_batch_size
    try:
        batch_size = reactive.max_batch_size
        for start in range(0, len(episodes), batch_size):
            batch = list(episodes[start : start + batch_size])
            sids = [f"mrl-{run}-{start + i}" for i in range(len(batch))]
            batch_logs: list[EpisodeLog] = []
            for slot, (sid, record) in enumerate(zip(sids, batch)):
                reset = carry[slot] is None or rng.random() < reset_prob
                if not reset:
                    reactive.store.save(SessionState(session_id=sid, stm=carry[slot].clone()))
                # on the model's device, as the committed STMs the collector reads (no host round trip)
                initial = reactive.model.initial_memory(1)[:, 0].detach().float() if reset else carry[slot]
                first_ids = template.interaction_ids(record.query, record.answer)[:max_len]
                batch_logs.append(EpisodeLog(
                    episode_id=sid, first_query=record.query, first_answer=record.answer, first_ids=first_ids,
                    stm_initial=initial.clone(), steps=[], reset=reset, teacher_forcing=teacher_forcing,
                    strategy=strategy, metadata=dict(record.metadata),
                ))
            turns = [list(r.interactions)[:max_steps] if max_steps is not None else list(r.interactions)
                     for r in batch]
            # one Query per (episode, turn); the seeds drawn turn by turn, episode by episode (both paths)
            queries: list[list[Query]] = [[] for _ in batch]
            for k in range(max((len(t) for t in turns), default=0)):
                for i in [i for i in range(len(batch)) if k < len(turns[i])]:
                    turn = turns[i][k]
                    if options.temperature > 0:  # each turn its own seed, drawn from `generator`: reproducible
                        opts = GenerationOptions(**{**options.__dict__, "seed": rng.getrandbits(31)})
                    else:
                        opts = options
                    queries[i].append(Query(sids[i], turn.query, options=opts, query_id=f"step{k}",
                                            memory_answer=turn.answer if teacher_forcing else None))
            if pipelined:  # each session's queue is in place before its first interaction can be committed: once
                # connected (a later batch), a prime may commit at once, and that commit submits the next query
                for sid, qs in zip(sids, queries):
                    collector.queued[sid] = deque(qs)
            for sid, record in zip(sids, batch):
                reactive.prime(sid, [(record.query, record.answer)], query_id="first")
            if pipelined:
                stms = _run_pipelined(reactive, collector, sids, queries, timeout)
            else:
                stms = _run_turn_by_turn(reactive, collector, sids, queries, timeout)
            for i, (sid, log) in enumerate(zip(sids, batch_logs)):
                for k, turn in enumerate(turns[i]):
                    done = collector.answers.pop((sid, f"step{k}"))
                    answer = list(done.token_ids)
                    action = answer + ([tokenizer.eos_id] if done.stopped_by_eos else [])
                    prompt_ids, reference_ids = template.query_ids(turn.query), tokenizer.encode(turn.answer)
                    memory_ids = [*prompt_ids, *(reference_ids if teacher_forcing else answer),
                                  tokenizer.eos_id][:max_len]
                    log.steps.append(StepLog(
                        query=turn.query, reference=turn.answer, prompt_ids=list(prompt_ids),
                        action_ids=action, answer_ids=answer, answer_text=done.text, memory_ids=memory_ids,
                        reference_ids=reference_ids, runtime_log_probs=list(done.log_probs),
                        stm_before=stms[i][k], stm_after=stms[i][k + 1],
                    ))
            for slot, sid in enumerate(sids):
                carry[slot] = stms[slot][-1]
                reactive.store.delete(sid)
            logs.extend(batch_logs)
    finally:
        subscription.dispose()
    return logs


def _run_pipelined(reactive: Any, collector: _Collector, sids: list[str], queries: list[list[Query]],
                   timeout: float) -> list[list[torch.Tensor]]:
    """Every session's queries queued at once (the collector tops each queue up); per session the committed
    STM after the first interaction and after every turn (``collector.queued`` holds every session's queries)."""
    for sid, qs in zip(sids, queries):
        for _ in range(min(len(qs), reactive.max_pending_per_session - 1)):  # the prime waits in the queue too
            collector.submit_next(sid)
    # Connected only now (a no-op if it already was): the runtime takes every message sent before `connect` in
    # one lane action, so a fresh runtime primes all sessions in one memory-update pass and admits their first
    # queries in one prefill; connected earlier, each message is one lane action and a step runs between two.
    reactive.connect()
    collector.wait([(sid, qid) for sid, qs in zip(sids, queries) for qid in ("first", *(q.query_id for q in qs))],
                   timeout)
    return [[collector.stms.pop((sid, q)) for q in ("first", *(q.query_id for q in qs))]
            for sid, qs in zip(sids, queries)]


def _run_turn_by_turn(reactive: Any, collector: _Collector, sids: list[str], queries: list[list[Query]],
                      timeout: float) -> list[list[torch.Tensor]]:
    """The reference path: turn k of every session, wait for all their commits, then turn k + 1."""
    collector.wait([(sid, "first") for sid in sids], timeout)
    stms = [[_committed_stm(reactive, sid)] for sid in sids]
    for k in range(max((len(qs) for qs in queries), default=0)):
        live = [i for i in range(len(sids)) if k < len(queries[i])]
        for i in live:
            reactive.submit(queries[i][k])
        collector.wait([(sids[i], f"step{k}") for i in live], timeout)
        for i in live:
            stms[i].append(_committed_stm(reactive, sids[i]))
    return stms


# ------------------------------------------------------------------------------------------------ log files


def _tensor_to_msg(t: torch.Tensor) -> dict[str, Any]:
    t = t.detach().cpu().contiguous()
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": t.numpy().tobytes()}


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _tensor_from_msg(data: Any, where: str) -> torch.Tensor:
    if not isinstance(data, dict) or set(data) != {"dtype", "shape", "data"}:
        raise EpisodeLogError(f"{where}: expected a tensor map with keys dtype, shape, data")
    dtype = _DTYPES.get(data["dtype"])
    if dtype is None:
        raise EpisodeLogError(f"{where}: unsupported dtype {data['dtype']!r}")
    shape = data["shape"]
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise EpisodeLogError(f"{where}: shape must be a list of non-negative ints, got {shape!r}")
    raw = data["data"]
    numel = 1
    for s in shape:
        numel *= s
    itemsize = torch.empty((), dtype=dtype).element_size()
    if not isinstance(raw, bytes) or len(raw) != numel * itemsize:
        size = len(raw) if isinstance(raw, bytes) else type(raw).__name__
        raise EpisodeLogError(f"{where}: data has {size} bytes, shape {shape} of {data['dtype']} needs "
                              f"{numel * itemsize}")
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape).clone()


_STEP_FIELDS: dict[str, Any] = {
    "query": str, "reference": str, "prompt_ids": "ids", "action_ids": "ids", "answer_ids": "ids",
    "answer_text": str, "memory_ids": "ids", "reference_ids": "ids", "runtime_log_probs": "floats",
    "stm_before": "tensor", "stm_after": "tensor", "reward": "optional_float",
}
_EPISODE_FIELDS: dict[str, Any] = {
    "episode_id": str, "first_query": str, "first_answer": str, "first_ids": "ids", "stm_initial": "tensor",
    "steps": "steps", "reset": bool, "teacher_forcing": bool, "strategy": str, "metadata": dict,
}


def _step_to_msg(step: StepLog) -> dict[str, Any]:
    out = {name: getattr(step, name) for name in _STEP_FIELDS}
    out["stm_before"], out["stm_after"] = _tensor_to_msg(step.stm_before), _tensor_to_msg(step.stm_after)
    return out


def _episode_to_msg(log: EpisodeLog) -> dict[str, Any]:
    out = {name: getattr(log, name) for name in _EPISODE_FIELDS}
    out["stm_initial"] = _tensor_to_msg(log.stm_initial)
    out["steps"] = [_step_to_msg(s) for s in log.steps]
    return out


def _check(kind: Any, value: Any, where: str) -> Any:
    if kind == "tensor":
        return _tensor_from_msg(value, where)
    if kind == "ids":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise EpisodeLogError(f"{where}: expected a list of int token ids, got {type(value).__name__}")
        return value
    if kind == "floats":
        if not isinstance(value, list) or not all(isinstance(v, (int, float)) for v in value):
            raise EpisodeLogError(f"{where}: expected a list of floats")
        return [float(v) for v in value]
    if kind == "optional_float":
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EpisodeLogError(f"{where}: expected a float or nil, got {type(value).__name__}")
        return None if value is None else float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise EpisodeLogError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _fields(data: Any, spec: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise EpisodeLogError(f"{where}: expected a map, got {type(data).__name__}")
    missing = [k for k in spec if k not in data]
    if missing:
        raise EpisodeLogError(f"{where}: missing field {missing[0]!r}")
    unknown = sorted(str(k) for k in set(data) - set(spec))
    if unknown:
        raise EpisodeLogError(f"{where}: unknown field {unknown[0]!r}")
    out = {}
    for name, kind in spec.items():
        if kind == "steps":
            if not isinstance(data[name], list):
                raise EpisodeLogError(f"{where}.steps: expected a list")
            out[name] = [StepLog(**_fields(s, _STEP_FIELDS, f"{where}.steps[{j}]")) for j, s in
                         enumerate(data[name])]
        else:
            out[name] = _check(kind, data[name], f"{where}.{name}")
    return out


def episode_from_msg(data: Any, index: int) -> EpisodeLog:
    return EpisodeLog(**_fields(data, _EPISODE_FIELDS, f"record {index}"))


def save_episode_logs(path: str | os.PathLike, logs: Sequence[EpisodeLog]) -> Path:
    """Write ``logs`` to ``path`` atomically (see the module docstring for the format)."""
    packer = msgpack.Packer(use_bin_type=True)
    chunks = [packer.pack({"format": FORMAT, "version": VERSION, "count": len(logs)})]
    chunks += [packer.pack(_episode_to_msg(log)) for log in logs]
    return atomic_write_bytes(path, b"".join(chunks))


def load_episode_logs(path: str | os.PathLike) -> list[EpisodeLog]:
    """Read a file written by `save_episode_logs`; `EpisodeLogError` names the bad record and field."""
    path = Path(path)
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=2**31 - 1)
    unpacker.feed(path.read_bytes())
    records: list[Any] = []
    try:
        for item in unpacker:
            records.append(item)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise EpisodeLogError(f"{path}: record {len(records) - 1} is not valid msgpack: {exc}") from exc
    if not records:
        raise EpisodeLogError(f"{path}: empty file (record -1, the header, is missing)")
    header = records[0]
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise EpisodeLogError(f"{path}: header: field 'format' must be {FORMAT!r}")
    if header.get("version") != VERSION:
        raise EpisodeLogError(f"{path}: header: field 'version' is {header.get('version')!r}, expected {VERSION}")
    count = header.get("count")
    if not isinstance(count, int) or count < 0:
        raise EpisodeLogError(f"{path}: header: field 'count' must be a non-negative int")
    body = records[1:]
    if len(body) < count:
        raise EpisodeLogError(f"{path}: truncated: record {len(body)} of {count} is missing or incomplete")
    if len(body) > count:
        raise EpisodeLogError(f"{path}: record {count}: extra data after the {count} records of the header")
    try:
        return [episode_from_msg(data, i) for i, data in enumerate(body)]
    except EpisodeLogError as exc:
        raise EpisodeLogError(f"{path}: {exc}") from None


__all__ = [
    "EpisodeLog",
    "EpisodeLogError",
    "StepLog",
    "collect_episodes",
    "load_episode_logs",
    "save_episode_logs",
]
