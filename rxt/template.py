"""The RxT interaction template.

One interaction (one event) is::

    [BOS][Q] query [A] answer [EOS]
    [BOS][Q] query [T] think [A] answer [EOS]      (with the model's reasoning)

and a system prompt, which is written into memory (encoded and passed through memory attention) rather than
prepended to a query, is::

    [BOS][I] text [EOS]

Space convention: no spaces or separators are inserted. Each text is encoded exactly as given, directly after its
marker token, with :meth:`RxTokenizer.encode` (special-token strings inside the text stay plain text), so the
spaces shown above are only for readability: ``query_ids("Hi")`` is ``[BOS, Q, *encode("Hi"), A]``, and a
leading or trailing space in the text is kept as part of it. With a byte-level tokenizer
``parse(interaction_ids(q, a, t))`` therefore returns exactly ``(q, a, t)``.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rxt.special_tokens import SpecialTokens
from rxt.tokenizer import RxTokenizer


@dataclass(frozen=True)
class Interaction:
    """One query/answer event. ``think`` is ``None`` when the interaction has no ``[T]`` section."""

    query: str
    answer: str
    think: str | None = None


def _as_ids(ids: Sequence[int] | torch.Tensor, name: str = "ids") -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(ids.shape)}")
        return [int(i) for i in ids.tolist()]
    try:
        return [operator.index(i) for i in ids]
    except TypeError as exc:
        raise TypeError(f"{name} must contain integer token ids: {exc}") from None


class InteractionTemplate:
    """Builds and parses interaction token sequences for an :class:`RxTokenizer` (see the module docstring)."""

    def __init__(self, tokenizer: RxTokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_id
        self.eos_id = tokenizer.eos_id
        self.pad_id = tokenizer.pad_id
        self.query_id = tokenizer.query_id
        self.answer_id = tokenizer.answer_id
        self.think_id = tokenizer.think_id
        self.internal_id = tokenizer.internal_id

    # ------------------------------------------------------------------ building
    def query_ids(self, query: str, think: str | None = None) -> list[int]:
        """The generation prompt ``[BOS][Q] query ([T] think) [A]``; the model continues with the answer."""
        ids = [self.bos_id, self.query_id, *self.tokenizer.encode(query)]
        if think is not None:
            ids += [self.think_id, *self.tokenizer.encode(think)]
        ids.append(self.answer_id)
        return ids

    def prompt_from_tokens(self, query_tokens: list[int]) -> list[int]:
        """`query_ids` (no think) of a query already tokenized (``tokenizer.encode(query)``, e.g. one of a batch
        tokenized together): ``[BOS][Q] tokens [A]``."""
        return [self.bos_id, self.query_id, *query_tokens, self.answer_id]

    def interaction_ids(self, query: str, answer: str, think: str | None = None) -> list[int]:
        """The full interaction ``[BOS][Q] query ([T] think) [A] answer [EOS]``."""
        return [*self.query_ids(query, think), *self.tokenizer.encode(answer), self.eos_id]

    def system_ids(self, text: str) -> list[int]:
        """A system prompt ``[BOS][I] text [EOS]``, to be written into memory."""
        return [self.bos_id, self.internal_id, *self.tokenizer.encode(text), self.eos_id]

    # ------------------------------------------------------------------ masks for losses
    def answer_mask(self, ids: Sequence[int] | torch.Tensor) -> list[bool] | torch.Tensor:
        """Which positions are answer tokens: everything after an ``[A]`` up to and including the next ``[EOS]``.

        ``[A]`` itself, the query, the think section and padding are ``False``. Several interactions in one
        sequence are handled (each ``[A]`` opens a span, each ``[EOS]`` closes it); an answer cut off before its
        ``[EOS]`` runs to the end of the sequence (padding excluded).

        Args:
            ids: a list of ints (returns ``list[bool]``) or a ``LongTensor`` of shape (T,) or (B, T) (returns a
                ``BoolTensor`` of the same shape).
        """
        if isinstance(ids, torch.Tensor):
            if ids.dim() not in (1, 2):
                raise ValueError(f"ids must have shape (T,) or (B, T), got {tuple(ids.shape)}")
            return self._answer_mask_tensor(ids)
        tensor = torch.tensor(_as_ids(ids), dtype=torch.long)
        return self._answer_mask_tensor(tensor).tolist()

    def _answer_mask_tensor(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[-1] == 0:
            return torch.zeros_like(ids, dtype=torch.bool)
        positions = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        none = torch.full_like(positions, -1)

        def last_before(token_id: int) -> torch.Tensor:
            # index of the last occurrence of token_id strictly before each position (-1 if none)
            last_at_or_before = torch.where(ids == token_id, positions, none).cummax(dim=-1).values
            shifted = torch.cat([none[..., :1], last_at_or_before[..., :-1]], dim=-1)
            return shifted

        last_answer = last_before(self.answer_id)
        last_eos = last_before(self.eos_id)
        return (last_answer >= 0) & (last_answer > last_eos) & (ids != self.pad_id)

    # ------------------------------------------------------------------ parsing
    def parse(self, ids: Sequence[int] | torch.Tensor) -> Interaction:
        """The inverse of :meth:`interaction_ids`: read one interaction back into its texts.

        Accepts ``[BOS]? [Q] query ([T] think)? [A] answer [EOS]? [PAD]*``. A missing final ``[EOS]`` (an answer
        cut off by a length limit) is accepted. Other special tokens inside the answer are dropped.

        Raises:
            ValueError: naming the position and the token that break the template.
        """
        seq = _as_ids(ids)
        end = len(seq)
        while end > 0 and seq[end - 1] == self.pad_id:
            end -= 1
        seq = seq[:end]
        pos = 1 if seq[:1] == [self.bos_id] else 0
        if pos >= len(seq) or seq[pos] != self.query_id:
            found = "end of sequence" if pos >= len(seq) else f"id {seq[pos]}"
            raise ValueError(f"expected {SpecialTokens.QUERY.value} at position {pos}, found {found}")
        pos += 1
        markers = (self.think_id, self.answer_id)
        query_end = next((i for i in range(pos, len(seq)) if seq[i] in markers), None)
        if query_end is None:
            raise ValueError(f"no {SpecialTokens.ANSWER.value} after the query (sequence of {len(seq)} ids)")
        self._check_plain(seq, pos, query_end, "query")
        query = self.tokenizer.decode(seq[pos:query_end])
        think: str | None = None
        pos = query_end
        if seq[pos] == self.think_id:
            think_end = next((i for i in range(pos + 1, len(seq)) if seq[i] == self.answer_id), None)
            if think_end is None:
                raise ValueError(f"no {SpecialTokens.ANSWER.value} after the think section at position {pos}")
            self._check_plain(seq, pos + 1, think_end, "think")
            think = self.tokenizer.decode(seq[pos + 1 : think_end])
            pos = think_end
        pos += 1  # past [A]
        answer_end = next((i for i in range(pos, len(seq)) if seq[i] == self.eos_id), len(seq))
        if answer_end + 1 < len(seq):
            raise ValueError(
                f"unexpected id {seq[answer_end + 1]} at position {answer_end + 1} after "
                f"{SpecialTokens.EOS.value} (only padding may follow)"
            )
        answer = self.tokenizer.decode(seq[pos:answer_end], skip_special_tokens=True)
        return Interaction(query=query, answer=answer, think=think)

    def _check_plain(self, seq: list[int], start: int, stop: int, field: str) -> None:
        structural = {self.bos_id, self.eos_id, self.query_id, self.answer_id, self.think_id, self.internal_id}
        for i in range(start, stop):
            if seq[i] in structural:
                raise ValueError(f"unexpected special token id {seq[i]} at position {i} inside the {field}")

    def parse_system(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The inverse of :meth:`system_ids`."""
        seq = _as_ids(ids)
        end = len(seq)
        while end > 0 and seq[end - 1] == self.pad_id:
            end -= 1
        if end < 3 or seq[:2] != [self.bos_id, self.internal_id] or seq[end - 1] != self.eos_id:
            raise ValueError(
                f"expected {SpecialTokens.BOS.value}{SpecialTokens.INTERNAL.value} text {SpecialTokens.EOS.value}"
            )
        self._check_plain(seq, 2, end - 1, "system text")
        return self.tokenizer.decode(seq[2 : end - 1])


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences into one batch.

    Args:
        sequences: B lists of token ids.
        pad_id: the id written into padding positions (``tokenizer.pad_id``).
        max_len: the width T of the batch; default the longest sequence.

    Returns:
        ``(ids, lengths)``: a ``LongTensor`` (B, T) and a ``LongTensor`` (B,) of the unpadded lengths.

    Raises:
        ValueError: if a sequence is longer than ``max_len`` (naming both), or ``max_len`` is negative.
    """
    if max_len is not None and max_len < 0:
        raise ValueError(f"max_len must be >= 0, got {max_len}")
    rows = [_as_ids(seq, f"sequences[{i}]") for i, seq in enumerate(sequences)]
    lengths = [len(row) for row in rows]
    width = max(lengths, default=0) if max_len is None else max_len
    for i, length in enumerate(lengths):
        if length > width:
            raise ValueError(f"sequences[{i}] has {length} tokens, longer than max_len={max_len}")
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, torch.tensor(lengths, dtype=torch.long)


__all__ = ["Interaction", "InteractionTemplate", "pad_batch"]
