"""A toy agent: a thermostat reports temperatures, the model answers, answers come out as effector events.

    python examples/agent_loop.py

Uses the packaged trained model when present, otherwise a seeded UNTRAINED `nano` RxT: then the answers are
noise, and the example shows only the plumbing (environment events in, effector events out, the internal hook
feeding an answer back as a new query, bounded by ``max_internal_turns``).
"""

from __future__ import annotations

import asyncio
import random

import reactivex
from reactivex import operators as ops

from rxnn_runtime.agent import AgentLoop, EnvironmentEvent
from rxnn_runtime.demo import default_model
from rxnn_runtime.reactive_model import ReactiveModel
from rxt.tokenizer import RxTokenizer


def thermostat(readings: int = 4, seed: int = 0) -> reactivex.Observable:
    """The environment: a room whose temperature drifts; one reading per event."""
    rng = random.Random(seed)
    temps = [round(19.0 + rng.uniform(-3, 3), 1) for _ in range(readings)]
    return reactivex.from_iterable(temps).pipe(
        ops.map(lambda t: EnvironmentEvent(f"The room is {t} C. Should the heating be on?", "thermostat", t))
    )


def think_once(answer: str) -> str | None:
    """Internal hook: ask the model to double-check a short answer once; otherwise stop the chain."""
    return None if len(answer) > 40 else f"You answered: {answer!r}. Are you sure?"


async def main() -> None:
    tokenizer = RxTokenizer.default()
    model, trained = default_model(tokenizer)
    if not trained:
        print("NOTE: untrained weights (seeded random init): the answers are noise; this shows the event flow.")
    reactive = ReactiveModel(model, tokenizer)
    reactive.connect()
    agent = AgentLoop(reactive, "thermostat", max_internal_turns=1, internal_hook=think_once,
                      options={"max_new_tokens": 16})
    agent.effectors.subscribe(
        lambda e: print(f"[effector] turn {e.turn_id} depth {e.internal_depth} "
                        f"(cause: {e.cause.data} C): {e.text!r}")
    )
    agent.errors.subscribe(lambda e: print(f"[error] {e.code}: {e.message}"))
    agent.attach(thermostat())
    await agent.join(timeout=600)
    await agent.aclose()
    state = reactive.session_state("thermostat")
    print(f"session 'thermostat': {state.turns} turns in memory, memory version {state.memory_version}")
    reactive.dispose()


if __name__ == "__main__":
    asyncio.run(main())
