"""The model executor: one batched step on the device for a `StepPlan` of the `TurnScheduler`.

In order, one lane action:

1. free the slots of turns that ended;
2. one memory-update pass (encoder + memory attention, `MemoryUpdater`: a CUDA graph per batch and length
   bucket; on CUDA on a stream of its own, so it runs beside the decode steps instead of between them) for the
   plan's turns (the runtime launches the turns that just finished answering as a plan of their
   own, right when it learns they ended, and primed interactions with the step): their STMs (resident on the device) stacked, the interactions right-padded, one forward;
3. one decode step for every running turn (`DecodeEngine.step`, a CUDA graph per bucket on the GPU);
4. one prefill for every admitted turn together (`DecodeEngine.start_batch`, memory K/V projected in the same
   pass from the sessions' device-resident STMs);
5. one token per row, written straight into the engine's next-token buffer: when every row is greedy and none
   asks for log-probs, the argmax the decode step itself wrote for every row of the bucket (inside its graph:
   no call of its own); otherwise
   `choose_rows_on_device` (one batched pass; greedy rows take the argmax, each sampled row draws from its own
   counter-based noise stream, `rxt.sampling_noise`) and one indexed copy into the rows' slots;
6. one asynchronous copy of that whole token buffer to a pinned host buffer kept for reuse, and an event: each
   row's token is read at its slot.

Slots the plan retires (their turn's token in flight is certainly its last) are freed in the engine before the
decode step, so they are not fed.

Each step makes a fixed number of torch calls, however many rows it has (index tensors of slot sets are built once
and kept on the device, the chosen tokens go straight into the engine's token buffer, prompts and interactions
are padded in Python and become one tensor): in a server every torch call lets the event loop's thread take the
GIL, and the lane may then wait up to a switch interval to get it back, so calls per row would make a step's host
time grow with its rows.

`launch` queues all of that without waiting for the device; `collect` waits for the token copy and returns the
`StepResult`. The runtime launches step N+1 before it collects step N, so the host turns step N's tokens into
events while the device computes step N+1 (a turn that stopped at step N on EOS has been fed one token more,
which is thrown away; one stopped by its length or its cache row was retired instead).

A failure in one phase fails only the turns of that phase (reported in `StepResult.failures`); the others go on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.turn_scheduler import StepPlan, StepResult
from rxt.decode_engine import PREFILL_BUCKETS, DecodeEngine, to_device_async
from rxt.memory_update import LENGTH_BUCKETS, MemoryUpdater
from rxt.model import RxT
from rxt.sampling import SamplingConfig, choose_rows_on_device
from rxt.sampling_noise import SampleStream

log = logging.getLogger(__name__)


#: how often `ModelExecutor.collect` looks at a running step's event while its caller has work to do between looks
#: (a decode step of the nano model takes 0.5-1 ms on an H200; Python sleeps no shorter than ~50 us on Linux)
WAIT_POLL_S = 50e-6


@dataclass
class LaunchedStep:
    """A step queued on the device: its plan, what is already known, and the pending token copy."""

    plan: StepPlan
    result: StepResult
    rows: list[ActiveTurn] = field(default_factory=list)  # turns whose next token is at their slot in ``host``
    host: torch.Tensor | None = None  # (max_slots,) the engine's token buffer, copied (pinned, reused; CUDA)
    ready: torch.cuda.Event | None = None  # recorded after that copy (CUDA)
    values: list[int] | None = None  # the token buffer as read (at launch on the CPU, at collect on CUDA)
    log_prob_rows: list[ActiveTurn] = field(default_factory=list)  # the rows of ``host_log_probs``
    host_log_probs: torch.Tensor | None = None  # their chosen tokens' log-probs, when any row asked for them
    want_log_probs: dict[ActiveTurn, bool] = field(default_factory=dict)


class ModelExecutor:
    def __init__(self, model: RxT, *, max_slots: int, pad_id: int, eos_id: int,
                 use_cuda_graphs: bool | None = None, update_stream: bool | None = None,
                 compile_update: bool = False) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.device = model.embedding.weight.device
        # Decode slots with a static KV cache; each step is a captured CUDA graph on the GPU (see DecodeEngine).
        # Each step also writes every row's argmax into the token buffer (inside its graph): the greedy rows' next
        # input with no call of its own; rows that sample or want log-probs overwrite theirs (`_choose`).
        self.engine = DecodeEngine(model.decoder, max_slots=max_slots, capacity=model.config.max_seq_len,
                                   use_cuda_graphs=use_cuda_graphs, argmax_into_tokens=True)
        # One encoder + memory-attention pass per step for every turn that finished (a graph per shape on CUDA;
        # ``compile_update``: each graph fused by torch.compile first, `MemoryUpdater`'s ``compile_pass``).
        self.updater = MemoryUpdater(model, pad_id=pad_id, use_cuda_graphs=use_cuda_graphs, max_batch=max_slots,
                                     compile_pass=compile_update)
        self._sampling: dict[int, tuple[SamplingConfig, SampleStream | None]] = {}  # slot -> row's sampling
        # Each slot's last chosen token, on the device: the engine's own token buffer, so the next decode step reads
        # it without a host round trip or a copy.
        self._next = self.engine.tokens
        self._next.fill_(pad_id)
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}  # slot tuple -> its index tensor on the device
        self._special: set[int] = set()  # slots that sample or want log-probs (greedy rows take the fast path)
        self._host_buffers: list[torch.Tensor] = []  # pinned token buffers free for reuse
        self._events: list[torch.cuda.Event] = []  # their events, free for reuse
        self._last_ready: torch.cuda.Event | None = None  # the event of the step collected last (held, not reused)
        # Memory-update passes on a stream of their own (CUDA, graphed updates; ``update_stream=False``: on the
        # lane's stream): a pass neither waits for the decode step queued before it nor holds up the ones after.
        if update_stream is None:
            update_stream = self.updater.graphed
        self._update_stream = (torch.cuda.Stream(device=self.device)
                               if update_stream and self.device.type == "cuda" else None)

    def set_update_priority(self, high: bool) -> None:
        """Run the memory-update passes on a stream of the device's highest priority (``high``) or of the default
        one. A pass then gets the GPU's free SMs before the decode steps queued beside it: the commits it gates
        (and the sessions' next turns) come sooner, the steps it overlaps a little later. Call between steps
        (nothing of a pass in flight on the old stream is waited for here; its events still are)."""
        if self._update_stream is None:
            return
        # lower is higher; a number past the device's range maps to its highest priority (torch.cuda.Stream)
        self._update_stream = torch.cuda.Stream(device=self.device, priority=-100 if high else 0)

    def reset(self) -> None:
        """Every slot free and no row's sampling state kept, for a new runtime over the same model; the captured
        graphs, the KV cache and the buffers stay (an MRL trainer's collections reuse them: each collection's
        fresh runtime would otherwise capture its graphs again)."""
        for slot, live in enumerate(self.engine.live):
            if live:
                self.engine.release(slot)
        self._sampling.clear()
        self._special.clear()
        self._next.fill_(self.pad_id)

    @property
    def capacity(self) -> int:
        return self.engine.capacity

    def graph_count(self) -> int:
        """CUDA graphs captured so far: decode buckets, prefill and memory-update shapes."""
        return len(self.engine._graphs) + len(self.engine._prefill_graphs) + len(self.updater._graphs)

    def precapture(self, *, max_prompt_tokens: int, max_interaction_tokens: int) -> int:
        """On CUDA, capture now every graph a step of up to ``max_slots`` rows can need: the decode step of each
        batch bucket, and the prefill and memory-update graphs of rows of at most these lengths (each batch bucket
        with each length bucket up to the one that covers the length), rather than when a step first meets the
        shape: a capture takes tens of ms, during which the lane, and so every session, waits. Returns how many
        graphs were captured (0 on the CPU)."""
        before = self.graph_count()
        max_interaction_tokens = min(max_interaction_tokens, self.model.config.max_seq_len)  # longer: truncated
        stm = self.model.initial_memory(1).detach()  # (L, 1, S, D): every session's STM shape and dtype
        self.engine.capture_steps(stm)
        for n in self.engine.buckets:
            for bucket in PREFILL_BUCKETS:
                self.engine.capture_prefill(n, min(bucket, max_prompt_tokens), stm)
                if bucket >= max_prompt_tokens:
                    break
            for bucket in LENGTH_BUCKETS:
                self.updater.capture(n, min(bucket, max_interaction_tokens), stm)
                if bucket >= max_interaction_tokens:
                    break
        return self.graph_count() - before

    @torch.no_grad()
    def launch(self, plan: StepPlan, stm_of: Callable[[str], torch.Tensor]) -> LaunchedStep:
        step = LaunchedStep(plan, StepResult())
        engine = self.engine
        live = engine.live
        for slot in plan.release:
            if live[slot]:
                engine.release(slot)
            self._sampling.pop(slot, None)
            self._special.discard(slot)
        for slot in plan.retire:  # the token in flight is the turn's last: not fed (the slot is freed later)
            if live[slot]:
                engine.release(slot)
        if plan.updates:
            self._update_memory(plan.updates, stm_of, step.result)
        parts: list[torch.Tensor] = []
        part_rows: list[ActiveTurn] = []
        decode = [t for t in plan.decode if live[t.slot]]
        last = engine.capacity - 1
        for turn in [t for t in decode if engine.slot_length[t.slot] >= last]:
            # Its row is full, so by the stop rule its last token ended it (the scheduler retires such turns
            # before feeding them; a caller that collects each step first sees it then): nothing to feed.
            engine.release(turn.slot)
            decode.remove(turn)
        if decode:
            try:
                bucket = engine.bucket()
                # Feeds ``self._next``, the engine's token buffer, and writes every row's argmax into it: with greedy
                # rows only, that is the whole token choice (no call of its own).
                logits = engine.step()
                if self._special:  # a sampled row or one that wants log-probs: the general choice, per row
                    index = tuple(t.slot for t in decode)
                    parts.append(logits if index == tuple(range(bucket)) else logits[self._index(index)])
                    part_rows.extend(decode)
                step.rows.extend(decode)
            except Exception as exc:
                log.exception("decode step failed")
                self._fail(decode, "internal", exc, step.result)
        if plan.admit:
            try:
                # the sessions' memories, stacked by the engine (on CUDA straight into its prefill's staging)
                logits = engine.start_batch([t.slot for t in plan.admit], [t.prompt for t in plan.admit],
                                            stm=[stm_of(t.session_id) for t in plan.admit])
                for turn in plan.admit:
                    cfg = turn.query.options.sampling(return_log_probs=turn.query.options.return_log_probs)
                    # row 0 of a batch of one: the stream a chat alone with this seed draws from
                    streams = cfg.streams(1)
                    self._sampling[turn.slot] = (cfg, streams[0] if streams else None)
                    if not cfg.greedy or cfg.return_log_probs:
                        self._special.add(turn.slot)
                parts.append(logits)
                part_rows.extend(plan.admit)
                step.rows.extend(plan.admit)
            except Exception as exc:
                log.exception("prefill failed")
                self._fail(plan.admit, "internal", exc, step.result)
        if step.rows:
            try:
                if parts:
                    self._choose(step, part_rows, parts[0] if len(parts) == 1 else torch.cat(parts))
                self._tokens_to_host(step)
            except Exception as exc:
                log.exception("token choice failed")
                self._fail(step.rows, "internal", exc, step.result)
                step.rows = []
        return step

    def _index(self, slots: tuple[int, ...]) -> torch.Tensor:
        """``slots`` as an index on the device, built once per distinct tuple (the rows of a step change only when
        turns start or end, so most steps reuse the previous step's)."""
        index = self._indices.get(slots)
        if index is None:
            if len(self._indices) >= 256:  # bounded: slot sets are many only under churn
                self._indices.clear()
            index = self._indices[slots] = to_device_async(list(slots), self.device)
        return index

    def _choose(self, step: LaunchedStep, rows: list[ActiveTurn], logits: torch.Tensor) -> None:
        """Tokens of ``rows`` (admitted turns, and decode rows when any row samples or wants log-probs) by each
        row's own sampling, written into their slots of the engine's token buffer."""
        sampling = [self._sampling[t.slot] for t in rows]
        tokens, log_probs = choose_rows_on_device(logits, sampling)
        self._next.index_copy_(0, self._index(tuple(t.slot for t in rows)), tokens)  # the next step's input
        if log_probs is not None:
            step.want_log_probs = {t: cfg.return_log_probs for t, (cfg, _) in zip(rows, sampling, strict=True)}
            step.log_prob_rows = rows
            step.host_log_probs = _to_host_async(log_probs) if log_probs.is_cuda else log_probs

    def _tokens_to_host(self, step: LaunchedStep) -> None:
        """The whole token buffer (every row's token sits at its slot) to the host: one copy however many rows,
        into a pinned buffer kept for reuse, and an event the collect waits on. On the CPU the values are read
        now: the next launch overwrites the buffer before this step is collected."""
        if not self._next.is_cuda:
            step.values = self._next.tolist()
            return
        # One buffer per step in flight (two in a pipelined runtime), one event more: made once, then reused.
        step.host = (self._host_buffers.pop() if self._host_buffers
                     else torch.empty(self._next.shape, dtype=self._next.dtype, pin_memory=True))
        step.ready = self._events.pop() if self._events else torch.cuda.Event()
        step.host.copy_(self._next, non_blocking=True)
        step.ready.record()

    def collect(self, step: LaunchedStep, while_waiting: Callable[[], bool] | None = None) -> StepResult:
        """Wait for the step's tokens and hand back its result (a device error fails the step's rows).

        ``while_waiting``: called between looks at the step's event while the step runs on the device (every
        `WAIT_POLL_S`, the GIL let go in between), for as long as it returns True; then the wait blocks as usual.
        The runtime settles the memory-update passes that finish meanwhile (`ReactiveModel`), where it would
        otherwise see them only at the end of its step."""
        result = step.result
        if not step.rows:
            return result
        try:
            if step.ready is not None:
                if while_waiting is not None:
                    while not step.ready.query() and while_waiting():
                        time.sleep(WAIT_POLL_S)
                step.ready.synchronize()
                step.values = step.host.tolist()
                self._host_buffers.append(step.host)  # read: free for a later step
                if self._last_ready is not None:
                    self._events.append(self._last_ready)
                self._last_ready = step.ready  # held until the next collect (the update stream may wait on it)
                step.host = step.ready = None
            log_probs = step.host_log_probs.tolist() if step.host_log_probs is not None else None
        except Exception as exc:
            log.exception("decode step failed on the device")
            self._fail(step.rows, "internal", exc, result)
            return result
        values = step.values
        tokens = result.tokens
        for turn in step.rows:
            tokens[turn] = (values[turn.slot], None)
        if log_probs is not None:
            want = step.want_log_probs
            for turn, log_prob in zip(step.log_prob_rows, log_probs, strict=True):
                if want[turn]:
                    tokens[turn] = (tokens[turn][0], log_prob)
        return result

    def _update_memory(self, turns: list[ActiveTurn], stm_of: Callable[[str], torch.Tensor],
                       result: StepResult) -> None:
        try:
            max_len = self.model.config.max_seq_len
            interactions = [t.interaction(self.eos_id, max_len) for t in turns]
            side = self._update_stream if self.updater.graphed else None
            if side is None:
                new_stm = self.updater([stm_of(t.session_id) for t in turns], interactions)
                if new_stm.is_cuda:  # the commit's copy waits for this pass only, not for the steps queued after it
                    result.memory_ready = torch.cuda.Event()
                    result.memory_ready.record()
            else:
                new_stm, result.memory_ready = self._update_on_side_stream(side, turns, stm_of, interactions)
        except Exception as exc:
            log.exception("memory update failed")
            for turn in turns:
                result.failures.append((turn, "memory_update", repr(exc)))
            return
        for turn, stm_row in zip(turns, new_stm.unbind(1), strict=True):
            result.new_memory[turn] = stm_row

    def _update_on_side_stream(self, side: torch.cuda.Stream, turns: list[ActiveTurn],
                               stm_of: Callable[[str], torch.Tensor],
                               interactions: list[list[int]]) -> tuple[torch.Tensor, torch.cuda.Event]:
        """The update pass on its own stream, beside the decode steps: returns the new STMs and the event recorded
        after the pass (whoever reads them waits on it: the commit writer does).

        The pass waits for the lane's stream only as far as its inputs need. Answers' STMs were written before
        their prefill, which came no later than the step collected last, so the pass waits on that step's event
        (done by now: it starts at once, not behind the step queued since). A primed interaction's STM may have
        been made on the lane's stream just now (a new session's initial memory): the pass waits for everything
        queued there. The new STMs are marked as used by the lane's stream too (its prefills read them), so their
        memory is not reused before the lane's reads are done."""
        lane = torch.cuda.current_stream()
        if self._last_ready is not None and all(t.kind == "answer" for t in turns):
            side.wait_event(self._last_ready)
        else:
            side.wait_stream(lane)
        with torch.cuda.stream(side):
            new_stm = self.updater([stm_of(t.session_id) for t in turns], interactions)
            new_stm.record_stream(lane)
            ready = torch.cuda.Event()
            ready.record()  # on the side stream: after the pass
        return new_stm, ready

    def _fail(self, turns: list[ActiveTurn], code: str, exc: Exception, result: StepResult) -> None:
        for turn in turns:
            if self.engine.live[turn.slot]:
                self.engine.release(turn.slot)
            self._sampling.pop(turn.slot, None)
            self._special.discard(turn.slot)
            result.failures.append((turn, code, repr(exc)))


def _to_host_async(values: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of ``values``, queued on the current stream (read it after the step's event)."""
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host
