"""Decode slots for continuous batching, with each step captured as a CUDA graph where possible.

A `DecodeEngine` owns one *static* KV cache of ``max_slots`` rows and static memory cross-attention K/V
buffers. A slot holds one sequence:

- `start(slot, prompt, memory)` prefills the prompt into the slot's cache row (other slots are untouched) and
  returns the logits of its first answer token;
- `step(tokens)` feeds one token to every slot of the smallest bucket that covers the live slots and returns
  their next-token logits. Sessions join (`start`) and leave (`release`) between steps, so a long answer never
  holds up short ones.

Every step has the same shapes (the cache is attended over its whole capacity, masked per row), so on CUDA the
step for each batch bucket is captured once as a CUDA graph and replayed: one launch per token instead of
hundreds of small kernels. On the CPU, or where capture fails (e.g. MoE dispatch, which needs host-side
sizes), the very same step runs eagerly. Token choice happens outside the graph, on the returned logits, so
rows may use different sampling settings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from rxt.decoder import Decoder
from rxt.layers import MemoryKV

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class DecodeEngine:
    def __init__(
        self,
        decoder: Decoder,
        max_slots: int,
        capacity: int,
        *,
        use_cuda_graphs: bool | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
    ) -> None:
        if max_slots < 1:
            raise ValueError(f"DecodeEngine max_slots={max_slots} must be >= 1")
        self.decoder = decoder
        self.max_slots = max_slots
        self.cache = decoder.new_cache(max_slots, capacity, static=True)
        self.capacity = self.cache.capacity
        device = self.cache.k.device
        self.device = device
        self.buckets = sorted({b for b in buckets if b < max_slots} | {max_slots})
        self.tokens = torch.zeros(max_slots, dtype=torch.long, device=device)
        self.memory: list[MemoryKV | None] | None = None  # allocated on the first start() with memory
        self.slot_length = [0] * max_slots  # host-side positions used per slot (no device sync needed)
        self.live = [False] * max_slots
        if use_cuda_graphs is None:
            use_cuda_graphs = device.type == "cuda"
        self.use_cuda_graphs = use_cuda_graphs and device.type == "cuda"
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._graph_failed = False

    # -- slots -----------------------------------------------------------------------------------------------
    def free_slot(self) -> int | None:
        """The lowest free slot (low slots keep the live rows in small buckets), or None when full."""
        for i, live in enumerate(self.live):
            if not live:
                return i
        return None

    @property
    def num_live(self) -> int:
        return sum(self.live)

    def _ensure_memory(self, memory: list[MemoryKV | None]) -> None:
        if self.memory is not None:
            return
        self.memory = []
        for kv in memory:
            if kv is None:
                self.memory.append(None)
                continue
            k, v = kv
            shape = (self.max_slots, *k.shape[1:])
            self.memory.append(
                (torch.zeros(shape, dtype=k.dtype, device=self.device), torch.zeros(shape, dtype=v.dtype, device=self.device))
            )

    def _memory_rows(self, start: int, stop: int) -> list[MemoryKV | None] | None:
        if self.memory is None:
            return None
        return [None if kv is None else (kv[0][start:stop], kv[1][start:stop]) for kv in self.memory]

    @torch.no_grad()
    def start(
        self, slot: int, prompt: torch.Tensor, memory: list[MemoryKV | None] | None = None
    ) -> torch.Tensor:
        """Prefill ``prompt`` (T,) into ``slot`` reading ``memory`` (per layer K/V of batch 1); return (V,) logits."""
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot={slot} is outside 0..{self.max_slots - 1}")
        if self.live[slot]:
            raise ValueError(f"slot {slot} is live; release it first")
        length = prompt.shape[0]
        if length < 1 or length >= self.capacity:
            raise ValueError(f"prompt of {length} tokens must be within 1..{self.capacity - 1} (capacity)")
        if memory is not None:
            self._ensure_memory(memory)
            for buffers, kv in zip(self.memory, memory, strict=True):
                if buffers is not None:
                    buffers[0][slot].copy_(kv[0][0])
                    buffers[1][slot].copy_(kv[1][0])
        row = self.cache.row_view(slot, slot + 1)
        row.lengths.zero_()
        out = self.decoder(
            prompt[None].to(self.device), memory=self._memory_rows(slot, slot + 1), cache=row, compute_logits=False
        )
        self.slot_length[slot] = length
        self.live[slot] = True
        return self.decoder.lm_head(out.hidden[0, -1])

    def release(self, slot: int) -> None:
        self.live[slot] = False
        self.slot_length[slot] = 0

    def room(self, slot: int) -> int:
        """How many more tokens ``slot`` can take."""
        return self.capacity - 1 - self.slot_length[slot]

    # -- stepping --------------------------------------------------------------------------------------------
    def bucket(self) -> int:
        top = max((i for i, live in enumerate(self.live) if live), default=0) + 1
        return next(b for b in self.buckets if b >= top)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed ``tokens`` (bucket,) — one per slot of the current bucket — and return (bucket, V) logits."""
        b = self.bucket()
        for slot in range(b):
            if self.live[slot]:
                if self.slot_length[slot] >= self.capacity - 1:
                    raise ValueError(f"slot {slot} is full (capacity={self.capacity}); release it")
                self.slot_length[slot] += 1
        self.tokens[:b].copy_(tokens[:b])
        if self.use_cuda_graphs and not self._graph_failed:
            graph = self._graphs.get(b) or self._capture(b)
            if graph is not None:
                graph[0].replay()
                return graph[1]
        return self._step(b)

    def _step(self, b: int) -> torch.Tensor:
        view = self.cache.row_view(0, b)
        out = self.decoder(self.tokens[:b, None], memory=self._memory_rows(0, b), cache=view, validate=False)
        return out.logits[:, -1]

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        saved_lengths = self.cache.lengths.clone()
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lets lazy initialisation happen outside the capture
                    self._step(b)
            torch.cuda.current_stream().wait_stream(stream)
            self.cache.lengths.copy_(saved_lengths)  # warm-up steps wrote at the next positions: undo the count
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self._step(b)
        except Exception as exc:  # noqa: BLE001 - capture is an optimisation; eager is always correct
            log.warning("CUDA graph capture failed for bucket %d (%s); decoding eagerly", b, exc)
            self._graph_failed = True
            self.cache.lengths.copy_(saved_lengths)
            return None
        # Capture recorded the step without running it; the first replay (by the caller) runs it.
        self._graphs[b] = (graph, logits)
        return self._graphs[b]
