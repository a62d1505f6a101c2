"""A `DecodeEngine` whose slots keep their KV cache across turns: prefix caching for a stateless decoder.

A stateless chat model must see the whole history ``[Q]q1[A]a1 ... [Q]qN[A]`` every turn. A serving engine
does not re-read it: it keeps the history's keys and values, and each turn prefills only the new tokens (the
previous answer's last token, which was sampled but never fed, and the new query) against them, then decodes
as usual. `extend(slot, tokens)` is that prefill; `step` decodes, exactly as in `DecodeEngine`.

Both attend over a *key window*: the smallest of ``key_buckets`` (powers of two, then the capacity) that
covers the longest live history, not over the whole capacity as `DecodeEngine`'s steps do. A paged-attention
engine reads only the used part of its cache, so per-token cost grows with the history as it really does,
instead of costing the full capacity from the first turn. On CUDA each (batch bucket, key window) step and each
(slot, query bucket, key window) extend is captured once as a CUDA graph and replayed; `capture` takes them up
front, as a serving engine does at start-up, so none is captured inside a timed turn. On the CPU the same
functions run eagerly, so the CPU tests check the maths the graphs replay.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from rxt.decode_engine import PREFILL_BUCKETS, DecodeEngine, log, to_device_async
from rxt.decoder import Decoder


class PrefixCachedEngine(DecodeEngine):
    def __init__(
        self,
        decoder: Decoder,
        max_slots: int,
        capacity: int,
        *,
        min_key_bucket: int = 128,
        query_buckets: Sequence[int] = PREFILL_BUCKETS,
        **engine_options,
    ) -> None:
        super().__init__(decoder, max_slots, capacity, **engine_options)
        if min_key_bucket < 1:
            raise ValueError(f"PrefixCachedEngine min_key_bucket={min_key_bucket} must be >= 1")
        windows, size = [], min_key_bucket
        while size < self.capacity:
            windows.append(size)
            size *= 2
        self.key_buckets = (*windows, self.capacity)
        self.query_buckets = tuple(sorted(query_buckets))
        # Graph inputs of `extend`: the new tokens (right-padded to the query bucket) and how many are real.
        # Sized for the longest extend the capacity allows, so the eager fallback uses it too.
        self._new_ids = torch.zeros(self.capacity, dtype=torch.long, device=self.device)
        self._new_count = torch.ones(1, dtype=torch.long, device=self.device)
        self._extend_graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def key_bucket(self, keys: int) -> int:
        """The key window for histories of up to ``keys`` positions."""
        return next(b for b in self.key_buckets if b >= keys)

    # -- prefill on top of the cached history ----------------------------------------------------------------
    @torch.no_grad()
    def extend(self, slot: int, tokens: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` (T,) after the history cached in ``slot``; return the (V,) logits of the next token.

        A slot that is not live starts an empty history (a new conversation). Only the new tokens are computed;
        they attend over the cached keys and over each other, causally.
        """
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot={slot} is outside 0..{self.max_slots - 1}")
        n = len(tokens)
        if not self.live[slot]:
            self.cache.lengths[slot] = 0
            self.slot_length[slot] = 0
        if not 1 <= n <= self.room(slot):
            raise ValueError(
                f"extend of {n} tokens must be within 1..{self.room(slot)} (the room left in slot {slot}: "
                f"capacity {self.capacity} - 1 - {self.slot_length[slot]} cached)"
            )
        old = self.slot_length[slot]
        # Right-pad to a query bucket when the padded positions fit; the window must cover them all, plus one
        # so the real length never reaches the window's end (a static view pins lengths below it).
        query = next((b for b in self.query_buckets if b >= n and old + b + 1 <= self.capacity), n)
        window = self.key_bucket(old + query + 1)
        ids = torch.as_tensor(tokens, dtype=torch.long)
        self._new_ids[:n].copy_(ids if ids.device == self.device else to_device_async(ids, self.device))
        self._new_ids[n:query].zero_()
        self._new_count.fill_(n)
        self.live[slot] = True
        self.slot_length[slot] = old + n
        key = (slot, query, window)
        if self.use_cuda_graphs and not self._graph_failed and query in self.query_buckets:
            graph = self._extend_graphs.get(key) or self._capture_extend(key)
            if graph is not None:
                graph[0].replay()
                return graph[1]
        return self._extend(key)

    def _extend(self, key: tuple[int, int, int]) -> torch.Tensor:
        slot, query, window = key
        view = self.cache.row_view(slot, slot + 1, static=True, keys=window)
        ids = self._new_ids[None, :query]
        valid = torch.arange(query, device=self.device)[None] < self._new_count[:, None]
        out = self.decoder(ids, attention_mask=valid, memory=self._memory_rows(slot, slot + 1), cache=view,
                           compute_logits=False, validate=False)
        last = out.hidden[0].index_select(0, self._new_count - 1)
        return self.decoder.lm_head(last)[0]

    def _capture_extend(self, key: tuple[int, int, int]):
        try:  # the warm-ups write past the slot's history, which is free
            self._extend_graphs[key] = self.capture_graph(lambda: self._extend(key))
        except Exception as exc:
            log.warning("CUDA graph capture of extend %s failed (%s); extending eagerly", key, exc)
            self._graph_failed = True
            return None
        return self._extend_graphs[key]

    # -- decode steps over the key window --------------------------------------------------------------------
    def _step_key(self, b: int) -> tuple[int, int]:
        # `step` has already counted the token being fed: slot_length is the keys this step needs, and the
        # window takes one more so the advanced length stays below its end (a static view pins it there).
        return b, self.key_bucket(max(self.slot_length[:b]) + 1)

    def _step(self, key: tuple[int, int]) -> torch.Tensor:
        b, window = key
        view = self.cache.row_view(0, b, keys=window)
        # Idle rows may still hold the length of an earlier, longer conversation: pin them inside the window
        # (live rows are below it already), so their padding step writes in bounds.
        view.lengths.clamp_(max=window - 1)
        return self._decode(self.tokens[:b, None], self._memory_rows(0, b), view)

    # -- start-up --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def capture(self, slot: int, new_tokens: Iterable[int]) -> int:
        """Capture, for every key window, the extend graphs of ``slot`` for these new-token counts and the step
        graph of its batch bucket; return how many graphs exist afterwards. No-op without CUDA graphs.

        Call it at start-up, with no slot live: the captures' warm-up runs write into the rows they cover."""
        if not (self.use_cuda_graphs and not self._graph_failed):
            return 0
        if any(self.live):
            raise ValueError(f"capture: slots {[i for i, on in enumerate(self.live) if on]} are live; capture "
                             "before any conversation starts")
        b = next(b for b in self.buckets if b > slot)
        self.cache.lengths[:b].zero_()
        for window in self.key_buckets:
            for n in new_tokens:
                query = next((q for q in self.query_buckets if q >= n), None)
                key = (slot, query, window)
                if query is not None and query + 1 <= window and key not in self._extend_graphs:
                    self._capture_extend(key)
            if (b, window) not in self._graphs:
                self._capture((b, window))
        return len(self._extend_graphs) + len(self._graphs)
