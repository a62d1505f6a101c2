"""The per-sequence stop rule, written once for every decode loop (chat, `generate`, serving, MRL rollouts).

A sequence samples at most ``max_new_tokens`` tokens. It ends on the first ``eos_id`` (the EOS is sampled but
is not part of the answer) or when the answer reaches ``max_new_tokens`` tokens or its KV-cache row has no room
for another token. Torch-free, so the runtime's scheduler can use it without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StopReason = Literal["eos", "length"]


@dataclass(frozen=True)
class StopRule:
    eos_id: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"StopRule.max_new_tokens={self.max_new_tokens} must be >= 1")

    def check(self, token: int, answer_length: int, room: int) -> StopReason | None:
        """After sampling ``token``: why the sequence stops, or None to go on.

        ``answer_length`` counts the answer tokens *including* ``token`` when it is not EOS; ``room`` is how many
        more tokens the sequence's cache row can take (going on means feeding ``token``, which needs one).
        """
        if token == self.eos_id:
            return "eos"
        if self.ends_by_length(answer_length, room):
            return "length"
        return None

    def ends_by_length(self, answer_length: int, room: int) -> bool:
        """Whether a sequence with ``answer_length`` answer tokens and ``room`` cache positions left stops whatever
        its last token was: the length half of `check`, known before that token is seen (a scheduler stops feeding
        a sequence whose token in flight is certain to be its last)."""
        return answer_length >= self.max_new_tokens or room < 1
