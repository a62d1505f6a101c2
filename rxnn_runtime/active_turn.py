"""A turn of one session, from acceptance to commit. Torch-free: the scheduler reads and writes it.

``kind`` is "answer" (a query to decode, then write to memory) or "prime" (an earlier interaction the client
brought, written to memory without decoding). ``phase`` walks waiting -> running -> answered -> updating ->
committing -> done for an answer; a prime skips running and answered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from rxnn_runtime.messages import Query

TurnKind = Literal["answer", "prime"]
Phase = Literal["waiting", "running", "answered", "updating", "committing", "done"]


@dataclass(eq=False)
class ActiveTurn:
    query: Query
    turn_id: int
    prompt: list[int]  # answer: [BOS][Q] query [A]; prime: the whole interaction written to memory
    kind: TurnKind = "answer"
    text_decoder: Any = None  # an rxt IncrementalDecoder (token -> newly completed text)
    memory_ids: list[int] | None = None  # teacher forcing: the answer tokens written to memory instead
    slot: int = -1
    phase: Phase = "waiting"
    answer: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    stopped_by_eos: bool = False
    stop_rule: Any = None  # the turn's rxt.stopping.StopRule, made once
    in_flight: int = 0  # tokens of launched steps not yet collected (the scheduler's count)
    retired: bool = False  # not fed any more: its token in flight is certainly its last (`TurnScheduler`)
    update_from: float | None = None  # scheduler clock when its memory work began (answer complete / prime applied)

    @property
    def session_id(self) -> str:
        return self.query.session_id

    @property
    def query_id(self) -> str | int:
        return self.query.query_id

    def interaction(self, eos_id: int, max_len: int) -> list[int]:
        """The ids written to memory: ``[BOS][Q] query [A] answer [EOS]`` (or the primed interaction)."""
        if self.kind == "prime":
            return self.prompt[:max_len]
        answer = self.memory_ids if self.memory_ids is not None else self.answer
        return [*self.prompt, *answer, eos_id][:max_len]
