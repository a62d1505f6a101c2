"""The model executor: one batched step on the device for a `StepPlan` of the `TurnScheduler`.

In order, one lane action:

1. free the slots of turns that ended;
2. one memory-update pass (encoder + memory attention, `MemoryUpdater`: a CUDA graph per batch and length
   bucket) for the plan's turns (the runtime launches the turns that just finished answering as a plan of their
   own, right when it learns they ended, and primed interactions with the step): their STMs (resident on the device) stacked, the interactions right-padded, one forward;
3. one decode step for every running turn (`DecodeEngine.step`, a CUDA graph per bucket on the GPU);
4. one prefill for every admitted turn together (`DecodeEngine.start_batch`, memory K/V projected in the same
   pass from the sessions' device-resident STMs);
5. one token per row (`choose_rows_on_device`: one batched pass; greedy rows take the argmax, each sampled row
   draws from its own counter-based noise stream, `rxt.sampling_noise`), written straight into the engine's
   next-token buffer, and one asynchronous copy to the host.

Each step makes a fixed number of torch calls, however many rows it has (index tensors of slot sets are built once
and kept on the device, the chosen tokens go straight into the engine's token buffer, prompts and interactions
are padded in Python and become one tensor): in a server every torch call lets the event loop's thread take the
GIL, and the lane may then wait up to a switch interval to get it back, so calls per row would make a step's host
time grow with its rows.

`launch` queues all of that without waiting for the device; `collect` waits for the token copy and returns the
`StepResult`. The runtime launches step N+1 before it collects step N, so the host turns step N's tokens into
events while the device computes step N+1 (a turn that stopped at step N has been fed one token more, which is
thrown away, unless its cache row is full: then it is not fed). `execute` is launch + collect, synchronously.

A failure in one phase fails only the turns of that phase (reported in `StepResult.failures`); the others go on.
"""

from __future__ import annotations

import logging
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


@dataclass
class LaunchedStep:
    """A step queued on the device: its plan, what is already known, and the pending token copy."""

    plan: StepPlan
    result: StepResult
    rows: list[ActiveTurn] = field(default_factory=list)  # turns whose next token is in ``host``
    host: torch.Tensor | None = None  # (rows,) tokens (pinned on CUDA)
    host_log_probs: torch.Tensor | None = None  # (rows,) their log-probs, when any row asked for them
    want_log_probs: list[bool] = field(default_factory=list)
    ready: torch.cuda.Event | None = None


class ModelExecutor:
    def __init__(self, model: RxT, *, max_slots: int, pad_id: int, eos_id: int,
                 use_cuda_graphs: bool | None = None) -> None:
        self.model = model
        self.pad_id = pad_id
        self.eos_id = eos_id
        self.device = model.embedding.weight.device
        # Decode slots with a static KV cache; each step is a captured CUDA graph on the GPU (see DecodeEngine).
        self.engine = DecodeEngine(model.decoder, max_slots=max_slots, capacity=model.config.max_seq_len,
                                   use_cuda_graphs=use_cuda_graphs)
        # One encoder + memory-attention pass per step for every turn that finished (a graph per shape on CUDA).
        self.updater = MemoryUpdater(model, pad_id=pad_id, use_cuda_graphs=use_cuda_graphs)
        self._sampling: dict[int, tuple[SamplingConfig, SampleStream | None]] = {}  # slot -> row's sampling
        # Each slot's last chosen token, on the device: the engine's own token buffer, so the next decode step reads
        # it without a host round trip or a copy.
        self._next = self.engine.tokens
        self._next.fill_(pad_id)
        self._indices: dict[tuple[int, ...], torch.Tensor] = {}  # slot tuple -> its index tensor on the device

    def reset(self) -> None:
        """Every slot free and no row's sampling state kept, for a new runtime over the same model; the captured
        graphs, the KV cache and the buffers stay (an MRL trainer's collections reuse them: each collection's
        fresh runtime would otherwise capture its graphs again)."""
        for slot, live in enumerate(self.engine.live):
            if live:
                self.engine.release(slot)
        self._sampling.clear()
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
        for slot in plan.release:
            if self.engine.live[slot]:
                self.engine.release(slot)
            self._sampling.pop(slot, None)
        if plan.updates:
            self._update_memory(plan.updates, stm_of, step.result)
        parts: list[torch.Tensor] = []
        decode = [t for t in plan.decode if self.engine.live[t.slot]]
        for turn in [t for t in decode if self.engine.room(t.slot) < 1]:
            # Its row is full, so by the stop rule its last token ended it (the scheduler sees that once it
            # collects the step before): nothing more to feed, the slot is done.
            self.engine.release(turn.slot)
            decode.remove(turn)
        if decode:
            try:
                bucket = self.engine.bucket()
                logits = self.engine.step()  # feeds ``self._next``, the engine's token buffer
                index = tuple(t.slot for t in decode)
                parts.append(logits if index == tuple(range(bucket)) else logits[self._index(index)])
                step.rows.extend(decode)
            except Exception as exc:
                log.exception("decode step failed")
                self._fail(decode, "internal", exc, step.result)
        if plan.admit:
            try:
                stm = torch.stack([stm_of(t.session_id) for t in plan.admit], dim=1)
                logits = self.engine.start_batch([t.slot for t in plan.admit], [t.prompt for t in plan.admit],
                                                 stm=stm)
                for turn in plan.admit:
                    cfg = turn.query.options.sampling(return_log_probs=turn.query.options.return_log_probs)
                    # row 0 of a batch of one: the stream a chat alone with this seed draws from
                    streams = cfg.streams(1)
                    self._sampling[turn.slot] = (cfg, streams[0] if streams else None)
                parts.append(logits)
                step.rows.extend(plan.admit)
            except Exception as exc:
                log.exception("prefill failed")
                self._fail(plan.admit, "internal", exc, step.result)
        if step.rows:
            try:
                self._choose(step, parts[0] if len(parts) == 1 else torch.cat(parts))
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

    def _choose(self, step: LaunchedStep, logits: torch.Tensor) -> None:
        rows = [self._sampling[t.slot] for t in step.rows]
        tokens, log_probs = choose_rows_on_device(logits, rows)
        self._next.index_copy_(0, self._index(tuple(t.slot for t in step.rows)), tokens)  # the next step's input
        step.want_log_probs = [cfg.return_log_probs for cfg, _ in rows]
        if tokens.is_cuda:
            step.host = _to_host_async(tokens)
            if log_probs is not None:
                step.host_log_probs = _to_host_async(log_probs)
            step.ready = torch.cuda.Event()
            step.ready.record()
        else:
            step.host, step.host_log_probs = tokens, log_probs

    def collect(self, step: LaunchedStep) -> StepResult:
        """Wait for the step's tokens and hand back its result (a device error fails the step's rows)."""
        result = step.result
        if not step.rows:
            return result
        try:
            if step.ready is not None:
                step.ready.synchronize()
            tokens = step.host.tolist()
            log_probs = step.host_log_probs.tolist() if step.host_log_probs is not None else [None] * len(tokens)
        except Exception as exc:
            log.exception("decode step failed on the device")
            self._fail(step.rows, "internal", exc, result)
            return result
        for turn, token, log_prob, wanted in zip(step.rows, tokens, log_probs, step.want_log_probs, strict=True):
            result.tokens[turn] = (token, log_prob if wanted else None)
        return result

    def _update_memory(self, turns: list[ActiveTurn], stm_of: Callable[[str], torch.Tensor],
                       result: StepResult) -> None:
        try:
            max_len = self.model.config.max_seq_len
            stm = torch.stack([stm_of(t.session_id) for t in turns], dim=1)
            new_stm = self.updater(stm, [t.interaction(self.eos_id, max_len) for t in turns])
            if new_stm.is_cuda:  # the commit's copy waits for this pass only, not for the steps queued after it
                result.memory_ready = torch.cuda.Event()
                result.memory_ready.record()
        except Exception as exc:
            log.exception("memory update failed")
            for turn in turns:
                result.failures.append((turn, "memory_update", repr(exc)))
            return
        for turn, stm_row in zip(turns, new_stm.unbind(1), strict=True):
            result.new_memory[turn] = stm_row

    def _fail(self, turns: list[ActiveTurn], code: str, exc: Exception, result: StepResult) -> None:
        for turn in turns:
            if self.engine.live[turn.slot]:
                self.engine.release(turn.slot)
            self._sampling.pop(turn.slot, None)
            result.failures.append((turn, code, repr(exc)))


def _to_host_async(values: torch.Tensor) -> torch.Tensor:
    """A pinned host copy of ``values``, queued on the current stream (read it after the step's event)."""
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host
