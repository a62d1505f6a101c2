"""torch Datasets and collators for every stage (text LM, interaction SFT, multi-turn episodes).

Label convention (all datasets): ``labels`` is aligned with ``input_ids`` (not pre-shifted) and holds
:data:`IGNORE_INDEX` (-100) wherever there is nothing to learn; padding is ALWAYS -100. For the autoregressive
objective the loss shifts by one (position t predicts ``labels[t + 1]``): use :func:`shift_labels`. For MLM,
``labels[t]`` is the original id at a masked position t (no shift).

Items are dicts of 1-D ``LongTensor`` (T_i,) with T_i <= max_len; the collators right-pad them into (B, T).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rxt.template import InteractionTemplate
from rxt.tokenizer import RxTokenizer
from training.data.records import EpisodeRecord, InteractionRecord, TextRecord

IGNORE_INDEX = -100
"""Target value ignored by ``torch.nn.functional.cross_entropy`` (its default ``ignore_index``)."""


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """AR targets for logits at positions 0..T-1: ``labels[..., 1:]`` followed by -100, shape unchanged (..., T)."""
    pad = torch.full_like(labels[..., :1], IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def _check(records: Sequence[Any], cls: type, max_len: int, name: str) -> list[Any]:
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 2:
        raise ValueError(f"{name}: max_len must be an int >= 2, got {max_len!r}")
    records = list(records)
    for i, record in enumerate(records):
        if not isinstance(record, cls):
            raise TypeError(f"{name}: records[{i}] must be a {cls.__name__}, got {type(record).__name__}")
    return records


def _long(ids: Sequence[int]) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long)


class CausalTextDataset(Dataset):
    """Autoregressive LM on plain text: ``[BOS] text [EOS]`` cut to ``max_len``.

    Item: ``input_ids`` (T,), ``labels`` (T,) = ``input_ids`` (shift in the loss; see the module docstring).
    ``token_ids`` (optional) are precomputed ``encode_record`` outputs, e.g. from :func:`~training.data.cache.pretokenize`.
    """

    def __init__(
        self, records: Sequence[TextRecord], tokenizer: RxTokenizer, max_len: int,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.records = _check(records, TextRecord, max_len, type(self).__name__)
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.token_ids = token_ids
        self.special_ids = frozenset(tokenizer.special_ids)

    def __len__(self) -> int:
        return len(self.records)

    def encode_record(self, record: TextRecord) -> list[int]:
        """``[BOS] text [EOS]`` ids, not yet cut to ``max_len``."""
        return [self.tokenizer.bos_id, *self.tokenizer.encode(record.text), self.tokenizer.eos_id]

    def ids(self, index: int) -> list[int]:
        ids = self.token_ids[index] if self.token_ids is not None else self.encode_record(self.records[index])
        return list(ids[: self.max_len])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = _long(self.ids(index))
        return {"input_ids": ids, "labels": ids.clone()}


class MaskedTextDataset(CausalTextDataset):
    """MLM on plain text (BERT 80/10/10), deterministic per ``(seed, epoch, index)``.

    Candidates are the non-special tokens (never ``[BOS]``, ``[EOS]``, pads or other specials). Each candidate is
    selected with probability ``mask_prob`` (at least one per sequence when there is a candidate); a selected
    token becomes ``[MASK]`` (80%), a random non-special id (10%) or stays (10%).

    Item: ``input_ids`` (T,) masked, ``labels`` (T,) = original id at selected positions, -100 elsewhere.
    Call :meth:`set_epoch` to draw new masks each epoch.
    """

    def __init__(
        self, records: Sequence[TextRecord], tokenizer: RxTokenizer, max_len: int, mask_prob: float = 0.15,
        seed: int = 0, token_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(records, tokenizer, max_len, token_ids)
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        self.mask_prob = mask_prob
        self.seed = seed
        self.epoch = 0
        self._random_ids = np.array(
            [i for i in range(tokenizer.vocab_size) if i not in self.special_ids], dtype=np.int64
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def mask(self, ids: Sequence[int], index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(masked_ids, labels)``, both (T,), for the ids of item ``index``."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        ids_arr = np.asarray(ids, dtype=np.int64)
        candidate = np.array([i not in self.special_ids for i in ids_arr.tolist()], dtype=bool)
        selected = (rng.random(len(ids_arr)) < self.mask_prob) & candidate
        if candidate.any() and not selected.any():
            selected[rng.choice(np.flatnonzero(candidate))] = True
        roll = rng.random(len(ids_arr))
        masked = ids_arr.copy()
        masked[selected & (roll < 0.8)] = self.tokenizer.mask_id
        swap = selected & (roll >= 0.8) & (roll < 0.9)
        masked[swap] = rng.choice(self._random_ids, size=int(swap.sum()))
        labels = np.where(selected, ids_arr, IGNORE_INDEX)
        return torch.from_numpy(masked), torch.from_numpy(labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        masked, labels = self.mask(self.ids(index), index)
        return {"input_ids": masked, "labels": labels}


class JointLMDataset(MaskedTextDataset):
    """Both views of one text for joint LM pre-training (stage 1).

    Item: ``input_ids``/``labels`` (T,) the AR (decoder) view as in :class:`CausalTextDataset`, and
    ``mlm_input_ids``/``mlm_labels`` (T,) the masked (encoder) view as in :class:`MaskedTextDataset`.
    """

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids(index)
        masked, mlm_labels = self.mask(ids, index)
        ar = _long(ids)
        return {"input_ids": ar, "labels": ar.clone(), "mlm_input_ids": masked, "mlm_labels": mlm_labels}


def _interaction_item(template: InteractionTemplate, ids: Sequence[int], max_len: int) -> dict[str, torch.Tensor]:
    ids_t = _long(ids[:max_len])
    mask = template.answer_mask(ids_t)
    return {"input_ids": ids_t, "labels": torch.where(mask, ids_t, torch.full_like(ids_t, IGNORE_INDEX))}


class InteractionDataset(Dataset):
    """Single-turn SFT: ``[BOS][Q] query ([T] think) [A] answer [EOS]`` cut to ``max_len`` (the end is cut).

    Item: ``input_ids`` (T,), ``labels`` (T,) = the id at answer positions (after ``[A]`` up to and including
    ``[EOS]``), -100 at the query, think, special markers and pads.
    """

    def __init__(
        self, records: Sequence[InteractionRecord], tokenizer: RxTokenizer, max_len: int,
        token_ids: Sequence[Sequence[int]] | None = None,
    ) -> None:
        self.records = _check(records, InteractionRecord, max_len, type(self).__name__)
        self.tokenizer = tokenizer
        self.template = InteractionTemplate(tokenizer)
        self.max_len = max_len
        self.token_ids = token_ids

    def __len__(self) -> int:
        return len(self.records)

    def encode_record(self, record: InteractionRecord) -> list[int]:
        return self.template.interaction_ids(record.query, record.answer, record.think)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.token_ids[index] if self.token_ids is not None else self.encode_record(self.records[index])
        return _interaction_item(self.template, ids, self.max_len)


class EpisodeDataset(Dataset):
    """Multi-turn episodes for memory-aware training: a list of the first ``max_turns`` turns.

    Item: list (turns) of dicts with ``query_ids`` (Tq,) = ``[BOS][Q] query [A]`` (the generation prompt),
    ``input_ids`` (T,) = the full interaction (alias ``interaction_ids``) and ``labels`` (T,) as in
    :class:`InteractionDataset`; every sequence is cut to ``max_len``.
    """

    def __init__(
        self, records: Sequence[EpisodeRecord], tokenizer: RxTokenizer, max_len: int, max_turns: int | None = None,
    ) -> None:
        self.records = _check(records, EpisodeRecord, max_len, type(self).__name__)
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"max_turns must be >= 1 or None, got {max_turns}")
        self.tokenizer = tokenizer
        self.template = InteractionTemplate(tokenizer)
        self.max_len = max_len
        self.max_turns = max_turns

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> list[dict[str, torch.Tensor]]:
        turns = self.records[index].turns
        if self.max_turns is not None:
            turns = turns[: self.max_turns]
        out = []
        for turn in turns:
            item = _interaction_item(
                self.template, self.template.interaction_ids(turn.query, turn.answer, turn.think), self.max_len
            )
            item["interaction_ids"] = item["input_ids"]
            item["query_ids"] = _long(self.template.query_ids(turn.query, turn.think)[: self.max_len])
            out.append(item)
        return out


def _pad(seqs: Sequence[torch.Tensor], value: int, width: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = seq
    return out


def _mask(lengths: Sequence[int], width: int) -> torch.Tensor:
    return torch.arange(width)[None, :] < torch.tensor(list(lengths), dtype=torch.long)[:, None]


def collate_lm(
    batch: Sequence[dict[str, torch.Tensor]], pad_id: int, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad LM items into a batch.

    Returns ``input_ids`` (B, T) padded with ``pad_id``, ``attention_mask`` (B, T) bool (True = real token) and
    ``labels`` (B, T) padded with -100; other keys are padded alike (``*labels`` with -100, ids with ``pad_id``),
    e.g. ``mlm_input_ids``/``mlm_labels`` of :class:`JointLMDataset`.
    """
    if not batch:
        raise ValueError("collate_lm: empty batch")
    lengths = [len(item["input_ids"]) for item in batch]
    width = max(lengths)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    out = {"attention_mask": _mask(lengths, width)}
    for key in batch[0]:
        value = IGNORE_INDEX if key.endswith("labels") else pad_id
        out[key] = _pad([item[key] for item in batch], value, width)
    return out


def collate_lm_counted(batch: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, Any]:
    """`collate_lm` plus ``num_targets``: the next-token targets (``labels[:, 1:] != -100``) counted here, on the
    host, so the training step needs no read-back from the device to count its tokens."""
    out: dict[str, Any] = collate_lm(batch, pad_id)
    out["num_targets"] = int((out["labels"][:, 1:] != IGNORE_INDEX).sum())
    return out


def collate_episodes(batch: Sequence[Sequence[dict[str, torch.Tensor]]], pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Batch episodes turn by turn: a list of N = max turns in the batch dicts, each with

    ``query_ids`` (B, Tq), ``query_attention_mask`` (B, Tq), ``input_ids`` (B, T), ``attention_mask`` (B, T),
    ``labels`` (B, T) and ``active`` (B,) bool. An episode with fewer turns is inactive at the later turns: its
    rows are all padding (mask False, labels -100).
    """
    if not batch:
        raise ValueError("collate_episodes: empty batch")
    empty = torch.zeros(0, dtype=torch.long)
    num_turns = max(len(episode) for episode in batch)
    turns = []
    for t in range(num_turns):
        rows = [episode[t] if t < len(episode) else None for episode in batch]
        query = [row["query_ids"] if row else empty for row in rows]
        ids = [row["input_ids"] if row else empty for row in rows]
        labels = [row["labels"] if row else empty for row in rows]
        tq = max(len(q) for q in query)
        ti = max(len(x) for x in ids)
        turns.append({
            "query_ids": _pad(query, pad_id, tq),
            "query_attention_mask": _mask([len(q) for q in query], tq),
            "input_ids": _pad(ids, pad_id, ti),
            "attention_mask": _mask([len(x) for x in ids], ti),
            "labels": _pad(labels, IGNORE_INDEX, ti),
            "active": torch.tensor([row is not None for row in rows], dtype=torch.bool),
        })
    return turns


__all__ = [
    "IGNORE_INDEX",
    "CausalTextDataset",
    "EpisodeDataset",
    "InteractionDataset",
    "JointLMDataset",
    "MaskedTextDataset",
    "collate_episodes",
    "collate_lm",
    "collate_lm_counted",
    "shift_labels",
]
