"""The model executor: one batched step on the device for a `StepPlan` of the `TurnScheduler`.

In order, one lane action:

1. free the slots of turns that ended;
2. one memory-update pass (encoder + memory attention) for every turn that finished answering in the previous
   step and every primed interaction of this step: their STMs (resident on the device) stacked, the
   interactions right-padded, one forward;
3. one decode step for every running turn (`DecodeEngine.step`, a CUDA graph per bucket on the GPU);
4. one prefill for every admitted turn together (`DecodeEngine.start_batch`, memory K/V projected in the same
   pass from the sessions' device-resident STMs);
5. one token per row (`choose_rows`: one argmax for the greedy rows, each sampled row with its own seeded
   generator), one device-to-host copy.

A failure in one phase fails only the turns of that phase (reported in `StepResult.failures`); the others go on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.turn_scheduler import StepPlan, StepResult
from rxt.decode_engine import DecodeEngine
from rxt.model import RxT
from rxt.sampling import SamplingConfig, choose_rows
from rxt.template import pad_batch

log = logging.getLogger(__name__)


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
        self._sampling: dict[int, tuple[SamplingConfig, torch.Generator | None]] = {}  # slot -> row's sampling
        self._next_token = [pad_id] * max_slots  # host copy of each slot's last token, fed at the next step

    @property
    def capacity(self) -> int:
        return self.engine.capacity

    @torch.no_grad()
    def execute(self, plan: StepPlan, stm_of: Callable[[str], torch.Tensor]) -> StepResult:
        result = StepResult()
        for slot in plan.release:
            if self.engine.live[slot]:
                self.engine.release(slot)
            self._sampling.pop(slot, None)
        if plan.updates:
            self._update_memory(plan.updates, stm_of, result)
        rows: list[tuple[ActiveTurn, torch.Tensor]] = []  # (turn, logits row source)
        logits_parts: list[torch.Tensor] = []
        decode = [t for t in plan.decode if self.engine.live[t.slot]]
        if decode:
            try:
                bucket = self.engine.bucket()
                tokens = torch.tensor(self._next_token[:bucket], dtype=torch.long)
                logits = self.engine.step(tokens.to(self.device, non_blocking=True))
                index = [t.slot for t in decode]
                logits_parts.append(logits if index == list(range(bucket)) else logits[index])
                rows.extend((t, None) for t in decode)
            except Exception as exc:
                log.exception("decode step failed")
                self._fail(decode, "internal", exc, result)
        if plan.admit:
            try:
                stm = torch.stack([stm_of(t.session_id) for t in plan.admit], dim=1)
                logits = self.engine.start_batch([t.slot for t in plan.admit], [t.prompt for t in plan.admit],
                                                 stm=stm)
                for turn in plan.admit:
                    cfg = turn.query.options.sampling(return_log_probs=turn.query.options.return_log_probs)
                    self._sampling[turn.slot] = (cfg, cfg.generator(self.device))
                logits_parts.append(logits)
                rows.extend((t, None) for t in plan.admit)
            except Exception as exc:
                log.exception("prefill failed")
                self._fail(plan.admit, "internal", exc, result)
        if rows:
            try:
                logits = logits_parts[0] if len(logits_parts) == 1 else torch.cat(logits_parts)
                tokens, log_probs = choose_rows(logits, [self._sampling[t.slot] for t, _ in rows])
            except Exception as exc:
                log.exception("token choice failed")
                self._fail([t for t, _ in rows], "internal", exc, result)
            else:
                for (turn, _), token, log_prob in zip(rows, tokens, log_probs, strict=True):
                    self._next_token[turn.slot] = token
                    result.tokens[turn] = (token, log_prob)
        return result

    def _update_memory(self, turns: list[ActiveTurn], stm_of: Callable[[str], torch.Tensor],
                       result: StepResult) -> None:
        try:
            max_len = self.model.config.max_seq_len
            ids, lengths = pad_batch([t.interaction(self.eos_id, max_len) for t in turns], self.pad_id)
            valid = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
            stm = torch.stack([stm_of(t.session_id) for t in turns], dim=1)
            new_stm = self.model.update_memory(stm, ids.to(self.device, non_blocking=True),
                                               valid.to(self.device, non_blocking=True))
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
