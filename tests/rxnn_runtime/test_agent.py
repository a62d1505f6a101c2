import asyncio

import pytest
import reactivex
import torch

from rxnn_runtime.agent import AgentError, AgentLoop, EffectorEvent, EnvironmentEvent
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer

OPTIONS = {"max_new_tokens": 4}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    tokenizer = RxTokenizer.default()
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128)).eval()
    return model, tokenizer


@pytest.fixture
def reactive(tiny):
    model, tokenizer = tiny
    reactive = ReactiveModel(model, tokenizer)
    reactive.connect()
    yield reactive
    reactive.dispose()


async def test_events_in_effectors_out_in_order(reactive):
    loop = AgentLoop(reactive, "agent-1", options=OPTIONS)
    seen: list[EffectorEvent] = []
    loop.effectors.subscribe(seen.append)
    events = [EnvironmentEvent(f"temperature {t} C", source="sensor") for t in (17, 19, 21)]
    for event in events:
        produced = await asyncio.wait_for(loop.handle(event), 60)
        assert len(produced) == 1
    assert [e.cause for e in seen] == events
    assert [e.turn_id for e in seen] == [1, 2, 3]
    assert all(e.internal_depth == 0 and isinstance(e.text, str) for e in seen)
    assert reactive.session_state("agent-1").turns == 3


async def test_attach_observable_handles_every_event_in_order(reactive):
    loop = AgentLoop(reactive, "agent-2", options=OPTIONS)
    seen: list[EffectorEvent] = []
    loop.effectors.subscribe(seen.append)
    texts = ["door opened", "door closed", "light on"]
    loop.attach(reactivex.from_iterable([EnvironmentEvent(t) for t in texts]))
    await loop.join(timeout=60)
    assert [e.cause.text for e in seen] == texts
    assert [e.turn_id for e in seen] == [1, 2, 3]
    await loop.aclose()


@pytest.mark.parametrize("budget", [0, 2])
async def test_internal_hook_chains_exactly_up_to_the_budget(reactive, budget):
    calls: list[str] = []

    def hook(answer: str) -> str:
        calls.append(answer)
        return f"think again ({len(calls)})"

    loop = AgentLoop(reactive, f"agent-budget-{budget}", max_internal_turns=budget, internal_hook=hook,
                     options=OPTIONS)
    produced = await asyncio.wait_for(loop.handle(EnvironmentEvent("start")), 60)
    assert [e.internal_depth for e in produced] == list(range(budget + 1))
    assert len(calls) == budget
    assert [e.turn_id for e in produced] == list(range(1, budget + 2))
    # The hook's texts were really sent as queries: the session committed one turn per answer.
    assert reactive.session_state(f"agent-budget-{budget}").turns == budget + 1


async def test_hook_returning_none_stops_the_chain(reactive):
    loop = AgentLoop(reactive, "agent-none", max_internal_turns=5, internal_hook=lambda a: None, options=OPTIONS)
    produced = await asyncio.wait_for(loop.handle("ping"), 60)
    assert len(produced) == 1


async def test_hook_exception_becomes_an_error_and_the_loop_lives_on(reactive):
    def hook(answer: str) -> str:
        raise RuntimeError("sensor offline")

    loop = AgentLoop(reactive, "agent-err", internal_hook=hook, options=OPTIONS)
    errors: list[AgentError] = []
    seen: list[EffectorEvent] = []
    loop.errors.subscribe(errors.append)
    loop.effectors.subscribe(seen.append)
    await asyncio.wait_for(loop.handle("first"), 60)
    assert len(errors) == 1 and errors[0].code == "hook" and "sensor offline" in errors[0].message
    assert isinstance(errors[0].exception, RuntimeError)
    await asyncio.wait_for(loop.handle("second"), 60)
    assert [e.cause.text for e in seen] == ["first", "second"]
    assert len(errors) == 2


async def test_failed_turn_becomes_an_error(reactive):
    loop = AgentLoop(reactive, "agent-long", options={"max_new_tokens": 1})
    errors: list[AgentError] = []
    loop.errors.subscribe(errors.append)
    produced = await asyncio.wait_for(loop.handle("word " * 400), 60)  # longer than max_seq_len
    assert produced == []
    assert len(errors) == 1 and errors[0].code == "turn" and "tokens" in errors[0].message
    produced = await asyncio.wait_for(loop.handle("short"), 60)
    assert len(produced) == 1


def test_negative_budget_is_rejected(reactive):
    with pytest.raises(ValueError, match="max_internal_turns"):
        AgentLoop(reactive, "x", max_internal_turns=-1)
