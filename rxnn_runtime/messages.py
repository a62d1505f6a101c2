"""What goes into a `ReactiveModel`'s input subject: queries, cancellations and resets.

`GenerationOptions.from_dict` and `Query.from_dict` validate untrusted input (websocket frames, HTTP bodies)
and raise `InvalidMessage` naming the field and the limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

MAX_SESSION_ID_LENGTH = 128
MAX_QUERY_CHARS = 8_000
MAX_NEW_TOKENS_LIMIT = 1_024
# Sampling runs in float32: a top_p or temperature below these underflows (every token dropped, or logits / T
# overflows to inf) and the turn would fail on the lane instead of at the edge.
MIN_TOP_P = 1e-6
MIN_TEMPERATURE = 1e-3  # 0 (greedy) is allowed; (0, MIN_TEMPERATURE) is not
MAX_TEMPERATURE = 10.0
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts
# An integer query id is echoed as an integer: signed 64-bit keeps it exact in msgpack and in every JSON client
# that parses integers as int64 (larger ones could not be sent back as sent).
QUERY_ID_RANGE = (-(2**63), 2**63 - 1)
QueryId = str | int


class InvalidMessage(ValueError):
    """A client message failed validation; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _check_session_id(value: Any, name: str = "session") -> str:
    if not isinstance(value, str) or not value:
        raise InvalidMessage(name, "must be a non-empty string")
    if len(value) > MAX_SESSION_ID_LENGTH:
        raise InvalidMessage(name, f"is {len(value)} characters, more than the limit {MAX_SESSION_ID_LENGTH}")
    # ASCII only, no leading "." and no "..", so every id the protocol accepts is also a valid file name for
    # the directory store (128 ASCII bytes + suffix stay under its name limit; no hidden or traversal names).
    if not all((c.isascii() and c.isalnum()) or c in "-_.:@" for c in value):
        raise InvalidMessage(name, "may contain only ASCII letters, digits and - _ . : @")
    if value.startswith(".") or ".." in value:
        raise InvalidMessage(name, "must not start with '.' or contain '..'")
    return value


def check_query_id(value: Any, name: str = "id") -> QueryId:
    """A client's query id: a string of at most MAX_SESSION_ID_LENGTH characters or an integer in QUERY_ID_RANGE
    (not a bool), kept as sent so it is echoed as sent ("" = none)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not QUERY_ID_RANGE[0] <= value <= QUERY_ID_RANGE[1]:
            raise InvalidMessage(name, f"{value} is outside the integer range {QUERY_ID_RANGE[0]}..{QUERY_ID_RANGE[1]}")
        return value
    if not isinstance(value, str) or len(value) > MAX_SESSION_ID_LENGTH:
        raise InvalidMessage(name, f"must be a string of at most {MAX_SESSION_ID_LENGTH} characters or an integer "
                             f"in {QUERY_ID_RANGE[0]}..{QUERY_ID_RANGE[1]}")
    return value


def check_text(value: Any, name: str = "text") -> str:
    """A string that can be encoded as UTF-8: JSON's \\ud800 escapes decode to lone surrogates, which the
    tokenizer cannot encode; refuse them here, at the edge, naming the field."""
    if not isinstance(value, str):
        raise InvalidMessage(name, f"must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidMessage(name, f"contains a lone surrogate U+{ord(value[exc.start]):04X} at index {exc.start}: "
                             "not valid Unicode text") from None
    return value


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    return_log_probs: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GenerationOptions:
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise InvalidMessage("options", "must be a map")
        unknown = sorted(set(data) - {"max_new_tokens", "temperature", "top_k", "top_p", "seed", "return_log_probs"})
        if unknown:
            raise InvalidMessage("options", f"unknown option(s) {unknown}")
        out = cls()
        kwargs: dict[str, Any] = {}
        for name, kind in (("max_new_tokens", int), ("top_k", int), ("temperature", float), ("top_p", float)):
            if name in data:
                value = data[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InvalidMessage(f"options.{name}", f"must be a number, got {type(value).__name__}")
                if not math.isfinite(value):  # JSON Infinity/NaN: int() of them would raise outside validation
                    raise InvalidMessage(f"options.{name}", f"must be a finite number, got {value}")
                if kind is int and value != int(value):
                    raise InvalidMessage(f"options.{name}", "must be an integer")
                kwargs[name] = kind(value)
        if "seed" in data and data["seed"] is not None:
            if isinstance(data["seed"], bool) or not isinstance(data["seed"], int):
                raise InvalidMessage("options.seed", "must be an integer or null")
            if not SEED_RANGE[0] <= data["seed"] <= SEED_RANGE[1]:
                raise InvalidMessage("options.seed", f"{data['seed']} is outside {SEED_RANGE[0]}..{SEED_RANGE[1]}")
            kwargs["seed"] = data["seed"]
        if "return_log_probs" in data:
            if not isinstance(data["return_log_probs"], bool):
                raise InvalidMessage("options.return_log_probs", "must be true or false")
            kwargs["return_log_probs"] = data["return_log_probs"]
        out = cls(**kwargs)
        out.validate()
        return out

    def validate(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise InvalidMessage(
                "options.max_new_tokens", f"{self.max_new_tokens} is outside 1..{MAX_NEW_TOKENS_LIMIT}"
            )
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise InvalidMessage("options.temperature", f"{self.temperature} is outside 0..10 (0 = greedy, else "
                                 f"at least {MIN_TEMPERATURE})")
        if self.top_k < 0:
            raise InvalidMessage("options.top_k", f"{self.top_k} must be >= 0")
        if not MIN_TOP_P <= self.top_p <= 1.0:
            raise InvalidMessage("options.top_p", f"{self.top_p} is outside (0, 1] (at least {MIN_TOP_P})")

    def sampling(self, *, return_log_probs: bool = False):
        """The `rxt.sampling.SamplingConfig` of these options (imported here: messages stay torch-free)."""
        from rxt.sampling import SamplingConfig

        return SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
            return_log_probs=return_log_probs,
        )


@dataclass(frozen=True)
class Query:
    """Ask ``text`` in session ``session_id``. ``query_id`` (str or int) is echoed as sent in every event of the
    turn."""

    session_id: str
    text: str
    options: GenerationOptions = field(default_factory=GenerationOptions)
    query_id: QueryId = ""
    memory_answer: str | None = None  # teacher forcing: write this answer to memory instead of the generated one

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        check_text(self.text)
        if self.memory_answer is not None:
            check_text(self.memory_answer, "memory_answer")
        if len(self.text) > MAX_QUERY_CHARS:
            raise InvalidMessage("text", f"is {len(self.text)} characters, more than the limit {MAX_QUERY_CHARS}")
        check_query_id(self.query_id)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Query:
        if "session" not in data:
            raise InvalidMessage("session", "is required")
        if "text" not in data:
            raise InvalidMessage("text", "is required")
        return cls(
            session_id=_check_session_id(data["session"]),
            text=data["text"],
            options=GenerationOptions.from_dict(data.get("options")),
            query_id=check_query_id(data.get("id", "")),
        )


@dataclass(frozen=True)
class Cancel:
    """Cancel the session's running or waiting turn (``query_id`` "" = whichever is current)."""

    session_id: str
    query_id: QueryId = ""

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        check_query_id(self.query_id)


@dataclass(frozen=True)
class Reset:
    """Forget the session: its memory goes back to the initial state and its turn count to 0."""

    session_id: str

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)


@dataclass(frozen=True)
class Prime:
    """Write earlier (query, answer) interactions into the session's memory, in order, without decoding.

    Each interaction is one memory-update row of a batched update pass (at most one per session per step, so a
    long history never holds up other sessions) and gets its own MemoryUpdated carrying ``query_id``. A Cancel
    for the session (or for ``query_id``) drops the interactions not yet written.
    """

    session_id: str
    interactions: tuple[tuple[str, str], ...]
    query_id: QueryId = ""

    def __post_init__(self) -> None:
        _check_session_id(self.session_id)
        check_query_id(self.query_id)
        for i, pair in enumerate(self.interactions):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise InvalidMessage(f"interactions[{i}]", "must be a (query, answer) pair of strings")


InputMessage = Query | Cancel | Reset | Prime
