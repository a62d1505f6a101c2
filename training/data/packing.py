"""Packing short documents (texts, interactions) into full rows, with attention kept within each document.

A padded batch of chat turns is mostly padding: a 40-token interaction in a 256-token row wastes 84% of the
step. Packing places several documents in one row of ``row_len`` tokens (first-fit decreasing: longest first,
each into the fullest row that still has room), and three per-token tensors keep the documents apart:

- ``doc`` (R, W): the document's index within its row, -1 at padding;
- ``positions`` (R, W): 0, 1, ... restarting at every document, so RoPE sees each one as if it were alone;
- ``labels`` (R, W): the aligned targets (-100 where nothing is learned) with -100 at every document's first
  token, because position t predicts ``labels[t + 1]`` and the last token of one document must not predict
  the first token of the next.

`document_masks` turns ``doc`` into the attention masks (same document only; causal for the decoder), so a
packed row computes, per document, exactly what the document computes alone in an unpadded row
(tests/training/data/test_packing.py checks it to 1e-10 in float64).

The packed rows are built once, on the host, and moved to the training device whole (`PackedRows.to`): a step
then gathers its rows by index on the device, with no DataLoader and no per-item Python. MLM views are drawn on
the device per step (`mask_tokens`), deterministic per (seed, step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

IGNORE_INDEX = -100


class PackingError(ValueError):
    """Bad input to packing: names the data source and the limit it broke."""


@dataclass
class PackedRows:
    """Documents packed into R rows of W tokens (see the module docstring). ``maskable`` marks MLM candidates
    (non-special tokens); ``targets`` counts each row's learnable AR targets (host tensor, for token counts
    without a device read-back)."""

    input_ids: torch.Tensor  # (R, W) long
    labels: torch.Tensor  # (R, W) long, aligned, -100 at pads and document starts
    doc: torch.Tensor  # (R, W) long, -1 at pads
    positions: torch.Tensor  # (R, W) long
    maskable: torch.Tensor  # (R, W) bool
    targets: torch.Tensor  # (R,) long, on the host
    num_documents: int
    real_tokens: int

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def row_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def fill(self) -> float:
        """Real tokens over row capacity (1.0 = no padding at all)."""
        return self.real_tokens / max(1, self.input_ids.numel())

    def to(self, device: torch.device | str) -> PackedRows:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("input_ids", "labels", "doc", "positions", "maskable"):
            moved[name] = moved[name].to(device)
        return PackedRows(**moved)

    def rows(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``index`` as a batch dict (gathered where the rows live, e.g. on the GPU)."""
        index = index.to(self.input_ids.device)
        return {"input_ids": self.input_ids[index], "labels": self.labels[index], "doc": self.doc[index],
                "positions": self.positions[index], "maskable": self.maskable[index]}


def _first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices, in order of placement) of at most ``capacity`` tokens each.

    Longest first, each into the fullest bin it fits (best fit): ``free[c]`` lists the bins with c tokens free,
    so a placement scans at most ``capacity`` buckets.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    free: list[list[int]] = [[] for _ in range(capacity + 1)]
    for i in order:
        need = lengths[i]
        chosen = -1
        for c in range(need, capacity + 1):
            if free[c]:
                chosen = free[c].pop()
                break
        if chosen < 0:
            chosen = len(bins)
            bins.append([])
            room.append(capacity)
        bins[chosen].append(i)
        room[chosen] -= need
        free[room[chosen]].append(chosen)
    return bins


def pack_documents(
    documents: Sequence[Sequence[int]],
    row_len: int,
    *,
    source: str,
    max_len: int,
    labels: Sequence[Sequence[int]] | None = None,
    special_ids: Sequence[int] = (),
    pad_id: int = 0,
) -> PackedRows:
    """Pack token-id ``documents`` into rows of ``row_len`` tokens.

    ``labels`` (default: the ids themselves, i.e. learn every next token) are aligned per document; each
    document's first label is replaced by -100 (see the module docstring). ``max_len`` is the model's limit:
    a row may not exceed it. Errors name ``source`` and the limit: a row longer than ``max_len``, a document
    longer than a row, an empty document list (e.g. everything filtered out).
    """
    if row_len > max_len:
        raise PackingError(f"{source}: packed row length {row_len} exceeds max_len={max_len} (the model's limit)")
    if row_len < 2:
        raise PackingError(f"{source}: packed row length {row_len} must be >= 2")
    if not documents:
        raise PackingError(f"{source}: no documents to pack (empty after filtering); rows of {row_len} tokens")
    lengths = [len(d) for d in documents]
    for i, n in enumerate(lengths):
        if n > row_len:
            raise PackingError(f"{source}: document {i} has {n} tokens, longer than a packed row of {row_len} "
                               "tokens (cut documents to the row length first, or raise it up to max_len)")
        if n == 0:
            raise PackingError(f"{source}: document {i} is empty")
    if labels is not None and [len(x) for x in labels] != lengths:
        raise PackingError(f"{source}: labels must have one entry per token of each document")
    bins = _first_fit_decreasing(lengths, row_len)
    rows = len(bins)
    ids = torch.full((rows, row_len), pad_id, dtype=torch.long)
    lab = torch.full((rows, row_len), IGNORE_INDEX, dtype=torch.long)
    doc = torch.full((rows, row_len), -1, dtype=torch.long)
    pos = torch.zeros((rows, row_len), dtype=torch.long)
    for r, members in enumerate(bins):
        at = 0
        for k, i in enumerate(members):
            n = lengths[i]
            ids[r, at : at + n] = torch.as_tensor(documents[i], dtype=torch.long)
            target = torch.as_tensor(labels[i] if labels is not None else documents[i], dtype=torch.long)
            lab[r, at : at + n] = target
            lab[r, at] = IGNORE_INDEX  # never predicted from the previous document's last token
            doc[r, at : at + n] = k
            pos[r, at : at + n] = torch.arange(n)
            at += n
    maskable = doc >= 0
    if special_ids:
        maskable &= ~torch.isin(ids, torch.as_tensor(list(special_ids), dtype=torch.long))
    return PackedRows(ids, lab, doc, pos, maskable, (lab != IGNORE_INDEX).sum(dim=1), len(documents),
                      sum(lengths))


def document_masks(doc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bidirectional, causal)`` boolean masks (B, 1, T, T) from ``doc`` (B, T): a query sees the keys of its
    own document (and, causally, only those at or before it). A padding query sees only itself, so no row of
    the softmax is empty (its output is finite and never used)."""
    same = (doc[:, :, None] == doc[:, None, :]) & (doc[:, None, :] >= 0)
    eye = torch.eye(doc.shape[1], dtype=torch.bool, device=doc.device)
    same = same | (eye & (doc < 0)[:, :, None])
    causal = same & torch.ones_like(eye).tril()
    return same[:, None], causal[:, None]


def mask_tokens(
    ids: torch.Tensor, maskable: torch.Tensor, *, mask_prob: float, mask_id: int, random_ids: torch.Tensor,
    generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1), max_selected: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT 80/10/10 on the device: ``(masked_ids, mlm_labels)`` (B, T). Each candidate (``maskable``) is
    selected with ``mask_prob``; a selected token becomes ``mask_id`` (80%), a random id from ``random_ids``
    (10%) or stays (10%). Labels are the original ids at selected positions, -100 elsewhere.

    ``shard = (rank, world_size)``: the draws are made for all ``world_size * B`` rows of the global micro-batch
    and this rank keeps its slice, so under DDP every row gets the mask a single process would give it.
    ``max_selected``: at most this many selections in the batch (the first in row-major order are kept), so the
    MLM head can run on a fixed number of gathered positions (`mlm_positions`); set it well above
    ``mask_prob`` x tokens and it never binds in practice."""
    rank, world = shard
    b = ids.shape[0]
    shape = (world * b, *ids.shape[1:])

    def draw(fn, *a):
        return fn(*a, shape, device=ids.device, generator=generator)[rank * b : (rank + 1) * b]

    select_draw = torch.rand(shape, device=ids.device, generator=generator)[rank * b : (rank + 1) * b]
    roll = torch.rand(shape, device=ids.device, generator=generator)[rank * b : (rank + 1) * b]
    pick = draw(torch.randint, len(random_ids))
    selected = (select_draw < mask_prob) & maskable
    if max_selected is not None:
        selected &= (selected.flatten().cumsum(0) <= max_selected).view_as(selected)
    masked = torch.where(selected & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    masked = torch.where(selected & (roll >= 0.8) & (roll < 0.9), random_ids.to(ids.device)[pick], masked)
    return masked, torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))


def mlm_positions(mlm_labels: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` flat positions of (B, T): every MLM target first (row-major), then non-targets as filler (their
    label is -100, so they add nothing to the loss). Static in size: no device read-back, compile-friendly."""
    flat = mlm_labels.flatten() == IGNORE_INDEX
    return torch.argsort(flat.to(torch.int8), stable=True)[:count]


def pack_dataset(dataset, row_len: int, *, source: str, max_len: int, special_ids: Sequence[int] = (),
                 pad_id: int = 0) -> PackedRows:
    """Pack every item of a stage dataset (``input_ids``/``labels`` dicts, e.g. `InteractionDataset`, whose
    labels are answer-only; `CausalTextDataset`-like datasets with an ``ids(i)`` method learn every token)."""
    documents, labels = [], []
    for i in range(len(dataset)):
        if hasattr(dataset, "ids"):
            ids = list(dataset.ids(i))
            documents.append(ids)
            labels.append(ids)
        else:
            item = dataset[i]
            documents.append(item["input_ids"].tolist())
            labels.append(item["labels"].tolist())
    return pack_documents(documents, row_len, source=source, max_len=max_len, labels=labels,
                          special_ids=special_ids, pad_id=pad_id)

__all__ = ["IGNORE_INDEX", "PackedRows", "PackingError", "document_masks", "mask_tokens", "mlm_positions", "pack_dataset", "pack_documents"]
