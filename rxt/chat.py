"""A single in-process conversation with an RxT: the model-level streaming API.

``for event in chat.stream("Hi!")`` yields `Token` events, then `AnswerDone`, then `MemoryUpdated` once the
finished interaction has been encoded into STM: the runtime's own events (`rxt.events`; ``TokenGenerated`` and
``AnswerCompleted`` are their chat names), numbered by turn and ``seq``. Decoding runs on a one-slot
`DecodeEngine` kept for the chat's life (the one decode path; on CUDA its prefill and steps are graphs). The memory update happens after the answer is out.
If the consumer stops iterating after `AnswerCompleted`, the update still runs (the generator's cleanup
commits it), so memory is never silently skipped; a turn abandoned mid-answer is not written to memory.

The asynchronous, multi-session, scheduled version of this is `rxnn_runtime.ReactiveModel`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from rxt.chat_events import ChatEvent
from rxt.decode_engine import DecodeEngine
from rxt.events import AnswerDone, MemoryUpdated, Token
from rxt.generation import decode_steps
from rxt.model import RxT
from rxt.sampling import SamplingConfig
from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer


class ReactiveChat:
    def __init__(
        self,
        model: RxT,
        tokenizer: RxTokenizer,
        sampling: SamplingConfig | None = None,
        *,
        system_prompt: str | None = None,
    ) -> None:
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer vocab_size={tokenizer.vocab_size} exceeds model vocab_size={model.config.vocab_size}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.template = InteractionTemplate(tokenizer)
        self.sampling = sampling or SamplingConfig()
        self.engine = DecodeEngine(model.decoder, max_slots=1, capacity=model.config.max_seq_len)
        self._seq = itertools.count(1)
        self.reset()
        if system_prompt:
            self.write_to_memory(self.template.system_ids(system_prompt))

    @property
    def device(self) -> torch.device:
        return self.model.embedding.weight.device

    def reset(self) -> None:
        """Start over from the initial memory."""
        self.stm = self.model.initial_memory(1).detach()
        self.memory_version = 0
        self.turns = 0

    @torch.no_grad()
    def write_to_memory(self, ids: list[int]) -> int:
        """Encode ``ids`` (an interaction or a system prompt) into STM; returns the new memory version."""
        ids = ids[: self.model.config.max_seq_len]
        self.stm = self.model.update_memory(self.stm, torch.tensor([ids], device=self.device))
        self.memory_version += 1
        return self.memory_version

    def stream(
        self, query: str, *, think: str | None = None, sampling: SamplingConfig | None = None
    ) -> Iterator[ChatEvent]:
        sampling = sampling or self.sampling
        prompt = self.template.query_ids(query, think)
        limit = self.model.config.max_seq_len - sampling.max_new_tokens
        if len(prompt) > limit:
            raise ValueError(
                f"query is {len(prompt)} tokens; with max_new_tokens={sampling.max_new_tokens} the limit is {limit}"
            )
        self.model.stm.validate(self.stm, 1)
        decoder = self.tokenizer.incremental_decoder()
        answer: list[int] = []
        stopped_by_eos = False
        turn = self.turns + 1
        # The memory K/V projection (once per turn, reused by every token) runs inside the prefill.
        steps = decode_steps(
            self.model.decoder,
            torch.tensor([prompt], device=self.device),
            None,
            sampling,
            eos_id=self.tokenizer.eos_id,
            pad_id=self.tokenizer.pad_id,
            stm=self.stm,
            engine=self.engine,
        )
        try:
            for step in steps:
                token = int(step.tokens[0])
                if token == self.tokenizer.eos_id:
                    stopped_by_eos = True
                    break
                answer.append(token)
                yield Token(turn_id=turn, seq=next(self._seq), index=len(answer) - 1, token_id=token,
                            text=decoder.decode_token(token))
        finally:
            steps.close()  # frees the engine's slot however the loop ends
        answered = False
        try:
            text = self.tokenizer.decode(answer)
            answered = True
            yield AnswerDone(turn_id=turn, seq=next(self._seq), text=text, token_ids=tuple(answer),
                             stopped_by_eos=stopped_by_eos, tail=decoder.flush())
        finally:
            if answered:
                version = self.write_to_memory([*prompt, *answer, self.tokenizer.eos_id])
                self.turns = turn
        yield MemoryUpdated(turn_id=turn, seq=next(self._seq), version=version)

    def ask(self, query: str, **kwargs) -> str:
        """Answer ``query`` and update memory; returns the answer text."""
        text = ""
        for event in self.stream(query, **kwargs):
            if isinstance(event, AnswerDone):
                text = event.text
        return text
