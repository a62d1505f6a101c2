"""While the lane waits for a decode step on the device, it commits the memory-update passes that finish meanwhile
and announces them at once, in a batch of their own, instead of with the step's token events at its end.

The CPU runs each step and pass synchronously, so these tests make them look asynchronous: the step's tokens and
the pass's result become "ready" only after a number of looks at their event, as a device's would."""

from __future__ import annotations

import pytest
import torch
from runtime_helpers import start_short_and_long, tiny_model

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.events import AnswerDone, MemoryUpdated, Token
from rxnn_runtime.messages import GenerationOptions, Query
from rxnn_runtime.model_executor import ModelExecutor
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.turn_scheduler import StepPlan


class CountdownEvent:
    """A CUDA event stand-in: ``query()`` is False for the first ``queries`` looks (the device still at work), then
    True; ``synchronize()`` waits it out."""

    def __init__(self, queries: int) -> None:
        self.left, self.looks, self.waited = queries, 0, 0

    def query(self) -> bool:
        self.looks += 1
        if self.left <= 0:
            return True
        self.left -= 1
        return False

    def synchronize(self) -> None:
        self.waited += 1
        self.left = 0


def _device_like(executor: ModelExecutor, step_queries: int, pass_queries: int) -> None:
    """Every step's tokens ready after ``step_queries`` looks, every update pass after ``pass_queries``."""
    launch, update = executor.launch, executor._update_memory

    def launch_async(plan, stm_of):
        step = launch(plan, stm_of)
        if step.rows:
            step.ready, step.host = CountdownEvent(step_queries), torch.tensor(step.values)
        return step

    def update_async(turns, stm_of, result):
        update(turns, stm_of, result)
        result.memory_ready = CountdownEvent(pass_queries)

    executor.launch, executor._update_memory = launch_async, update_async


def test_collect_looks_at_the_step_while_the_caller_has_work_then_waits():
    model, tokenizer = tiny_model()
    executor = ModelExecutor(model, max_slots=2, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    _device_like(executor, step_queries=4, pass_queries=0)

    turn = ActiveTurn(Query("s", "hi", GenerationOptions(max_new_tokens=4)), 1, [tokenizer.bos_id, 5, 6], slot=0)
    stm = model.initial_memory(1)[:, 0]
    step = executor.launch(StepPlan(admit=[turn]), lambda sid: stm)
    calls: list[int] = []
    result = executor.collect(step, lambda: calls.append(1) or len(calls) < 2)
    assert len(calls) == 2  # looked, called back, looked again; the callback said "no more", so it waited
    assert result.tokens[turn][0] == executor._next.tolist()[0] and step.ready is None
    step = executor.launch(StepPlan(decode=[turn]), lambda sid: stm)
    event = step.ready
    calls.clear()
    executor.collect(step, lambda: calls.append(1) or True)
    assert len(calls) == 4 and event.waited == 1  # a callback between the looks until the step was done


@pytest.mark.parametrize("while_waiting", [True, False])
def test_a_pass_done_during_a_step_is_announced_before_the_step_ends(while_waiting):
    model, tokenizer = tiny_model()
    reactive = ReactiveModel(model, tokenizer, max_batch_size=4, settle_while_waiting=while_waiting)
    _device_like(reactive.executor, step_queries=6, pass_queries=2)
    batches = start_short_and_long(reactive)
    try:
        assert batches.wait_for(lambda bs: sum(isinstance(e, MemoryUpdated) for b in bs for e in b) == 2)
        order = list(batches.events)
        (committed,) = [b for b in order if any(isinstance(e, MemoryUpdated) and e.session_id == "short" for e in b)]
        long_done = next(i for i, b in enumerate(order) if any(isinstance(e, AnswerDone) and e.session_id == "long"
                                                               for e in b))
        assert order.index(committed) < long_done  # committed while the long answer still ran, either way
        if while_waiting:  # a batch of its own, left during the wait: no token of the step that was running
            assert all(isinstance(e, MemoryUpdated) for e in committed)
        else:  # seen at the end of a step: it leaves with that step's tokens
            assert any(isinstance(e, Token) and e.session_id == "long" for e in committed)
        (event,) = [e for e in committed if isinstance(e, MemoryUpdated)]
        assert event.update_ms is not None and event.update_ms >= 0
    finally:
        reactive.dispose()
