"""Turning input messages into turns for the scheduler: load the session, tokenize, check the limits.

Runs on the lane. Whatever fails here fails only that message, as an Error event: a session that cannot be
loaded (``session``: a bad stored record, an STM with NaN), text the tokenizer cannot encode (``invalid``), a
prompt that leaves no room for the answer (``too_long``), a full queue (``queue_full``, worded by the scheduler).
"""

from __future__ import annotations

from rxnn_runtime.active_turn import ActiveTurn
from rxnn_runtime.messages import Prime, Query
from rxnn_runtime.session_cache import SessionCache
from rxnn_runtime.turn_scheduler import TurnScheduler
from rxt.events import Error, Event
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer


class TurnIntake:
    def __init__(self, scheduler: TurnScheduler, sessions: SessionCache, tokenizer: RxTokenizer,
                 template: InteractionTemplate, *, capacity: int, max_seq_len: int) -> None:
        self.scheduler = scheduler
        self.sessions = sessions
        self.tokenizer = tokenizer
        self.template = template
        self.capacity = capacity  # positions a turn's cache row holds: prompt + answer must fit
        self.max_seq_len = max_seq_len

    def _error(self, sid: str, query_id: str, code: str, message: str) -> list[Event]:
        return [self.scheduler.event(Error, sid, 0, query_id, code=code, message=message)]

    def tokenize_many(self, queries: list[Query]) -> dict[int, list[int]]:
        """The texts of the queries a lane action takes together, tokenized in one call: ``{id(query): ids}``
        (empty for fewer than two, or when the batch fails: each query is then tokenized alone and a text that
        cannot be tokenized fails only its own query). One call rather than one per query: each tokenizer call
        lets the GIL go, and with a busy event loop in the process the lane then waits to get it back."""
        if len(queries) < 2:
            return {}
        try:
            batch = self.tokenizer.encode_batch([q.text for q in queries])
        except Exception:
            return {}
        return {id(q): ids for q, ids in zip(queries, batch, strict=True)}

    def query(self, query: Query, text_ids: list[int] | None = None) -> list[Event]:
        """Accept ``query`` (``text_ids``: its text already tokenized, `tokenize_many`)."""
        sid = query.session_id
        try:
            state = self.sessions.get(sid)
        except Exception as exc:
            return self._error(sid, query.query_id, "session", str(exc))
        try:
            prompt = (self.template.query_ids(query.text) if text_ids is None
                      else self.template.prompt_from_tokens(text_ids))
            memory_ids = None if query.memory_answer is None else self.tokenizer.encode(query.memory_answer)
        except Exception as exc:  # e.g. a lone surrogate the tokenizer cannot encode
            return self._error(sid, query.query_id, "invalid", f"text cannot be tokenized: {exc}")
        limit = self.capacity - query.options.max_new_tokens
        if len(prompt) > limit:
            return self._error(
                sid, query.query_id, "too_long",
                f"text is {len(prompt)} tokens; with options.max_new_tokens={query.options.max_new_tokens} "
                f"the limit is {limit} (max_seq_len={self.max_seq_len})")
        if self.scheduler.waiting(sid) >= self.scheduler.max_pending_per_session:
            return self.scheduler.add(ActiveTurn(query, 0, prompt))  # the scheduler words the queue_full Error
        turn = ActiveTurn(query, self.scheduler.next_turn_id(sid, state.turns), prompt,
                          text_decoder=self.tokenizer.incremental_decoder(), memory_ids=memory_ids)
        return self.scheduler.add(turn)

    def prime(self, message: Prime) -> list[Event]:
        sid = message.session_id
        state = None
        try:
            state = self.sessions.get(sid)
            ids = [self.template.interaction_ids(q, a)[: self.max_seq_len] for q, a in message.interactions]
        except Exception as exc:  # a bad record, or history the tokenizer cannot encode
            if state is None:
                return self._error(sid, message.query_id, "session", str(exc))
            return self._error(sid, message.query_id, "invalid", f"history cannot be tokenized: {exc}")
        query = Query(sid, "", query_id=message.query_id)
        events: list[Event] = []
        for interaction in ids:
            turn_id = self.scheduler.next_turn_id(sid, state.turns)
            events += self.scheduler.add(ActiveTurn(query, turn_id, interaction, kind="prime"))
        return events
