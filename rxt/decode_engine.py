"""Decode slots for continuous batching, with each step captured as a CUDA graph where possible.

A `DecodeEngine` owns one *static* KV cache of ``max_slots`` rows and static memory cross-attention K/V
buffers. A slot holds one sequence:

- `start(slot, prompt, memory=..., stm=...)` prefills the prompt into the slot's cache row (other slots are
  untouched) and returns the logits of its first answer token. Given ``stm`` (L, S, D) instead of projected
  ``memory``, the memory K/V projection happens inside the prefill, and on CUDA the whole prefill (projection,
  prompt padded to a length bucket, first-token logits) is one captured graph per (batch, length) bucket,
  staged in a cache of the bucket's rows and copied into the slots;
- `start_batch(slots, prompts, stm=...)` prefills queries that arrive together in one pass (the same graphs);
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

import array
import logging
from collections.abc import Sequence

import torch

from rxt.decoder import Decoder
from rxt.graph_capture import GraphPool
from rxt.layers import MemoryKV

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def host_ids(values: list[int], *, pin: bool = False) -> torch.Tensor:
    """``values`` (Python ints) as a 1-D int64 host tensor, pinned with ``pin``: converted in C through an
    ``array('q')``, about 4x faster than ``torch.tensor(values)`` (which reads the list one int at a time) for the few
    thousand ids of a batched prefill or memory update, which a serving lane builds on every such step."""
    if not values:
        host = torch.empty(0, dtype=torch.long)
    else:
        host = torch.frombuffer(array.array("q", values), dtype=torch.int64)  # shares (and keeps) the array
    return host.pin_memory() if pin else host


def pad_rows(rows: Sequence[Sequence[int] | torch.Tensor], batch: int, length: int, pad_id: int = 0) -> torch.Tensor:
    """``rows`` right-padded with ``pad_id`` into a host (batch, length) long tensor; rows past ``len(rows)`` are all
    padding. Rows given as lists are padded in Python and become a tensor in one call (a torch call per row hands
    the GIL to the other threads of a server each time, and may wait up to a switch interval to get it back)."""
    if all(not isinstance(row, torch.Tensor) for row in rows):
        return host_ids(padded_flat(rows, batch, length, pad_id)).view(batch, length)
    ids = torch.full((batch, length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return ids


def padded_flat(rows: Sequence[Sequence[int]], batch: int, length: int, pad_id: int = 0) -> list[int]:
    """``rows`` (lists of ids) right-padded to ``length`` and to ``batch`` rows, flattened row after row, as one Python
    list: `pad_rows`' values, for a caller that appends more values before making the one tensor."""
    flat: list[int] = []
    for row in rows:
        flat.extend(row)
        flat.extend([pad_id] * (length - len(row)))
    flat.extend([pad_id] * (length * (batch - len(rows))))
    return flat


def to_device_async(values: list[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Small host ids on ``device`` without waiting for the work already queued there (a plain
    ``torch.tensor(..., device=cuda)`` copies synchronously, which would stall the host behind the GPU)."""
    if isinstance(values, torch.Tensor):
        host = values.pin_memory() if device.type == "cuda" else values
    else:
        host = host_ids(values, pin=device.type == "cuda")
    return host.to(device, non_blocking=True)


class DecodeEngine:
    def __init__(
        self,
        decoder: Decoder,
        max_slots: int,
        capacity: int,
        *,
        use_cuda_graphs: bool | None = None,
        buckets: Sequence[int] = DEFAULT_BUCKETS,
        compile_step: bool = False,
        argmax_into_tokens: bool = False,
    ) -> None:
        """``argmax_into_tokens``: every step also writes each row's argmax into the token buffer (``self.tokens``),
        inside the step's graph on CUDA, so a greedy caller that feeds the buffer (``step()``) makes one call a
        token, not two (a serving lane pays for every torch call: each may hand the GIL to another thread)."""
        if max_slots < 1:
            raise ValueError(f"DecodeEngine max_slots={max_slots} must be >= 1")
        self.argmax_into_tokens = argmax_into_tokens
        self.decoder = decoder
        self.max_slots = max_slots
        # One row more than the slots: a graphed prefill's padding rows are written there (`_prefill`), never read.
        self.cache = decoder.new_cache(max_slots + 1, capacity, static=True)
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
        # Optional: fuse the step's many small kernels with torch.compile before capturing it (GPU only; the
        # benchmark measures whether it pays off).
        self._decode = torch.compile(self._decode_impl, dynamic=False) if compile_step else self._decode_impl
        self._prefill_graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._stages: dict[int, tuple[dict[str, torch.Tensor], object]] = {}  # batch -> staging buffers, cache
        self._stage_store: tuple[dict[str, torch.Tensor], object] | None = None  # what every batch's stage views
        # Decode-step and prefill graphs all replay on the caller's stream, one at a time: one memory pool for all
        # of them (`rxt.graph_capture`), not one per graph.
        self.graph_pool = GraphPool()

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
            shape = (self.max_slots + 1, *k.shape[1:])  # + the padding rows' row, as the cache
            self.memory.append(
                (torch.zeros(shape, dtype=k.dtype, device=self.device), torch.zeros(shape, dtype=v.dtype, device=self.device))
            )

    def _memory_rows(self, start: int, stop: int) -> list[MemoryKV | None] | None:
        if self.memory is None:
            return None
        return [None if kv is None else (kv[0][start:stop], kv[1][start:stop]) for kv in self.memory]

    @torch.no_grad()
    def start(
        self,
        slot: int,
        prompt: torch.Tensor,
        memory: list[MemoryKV | None] | None = None,
        *,
        stm: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Prefill ``prompt`` (T,) into ``slot``; return the (V,) logits of the first answer token.

        The slot reads either ``memory`` (per-layer K/V of batch 1, already projected) or ``stm`` (L, S, D),
        projected here; with ``stm`` on CUDA the prefill is a captured graph.
        """
        if stm is not None:
            if memory is not None:
                raise ValueError("DecodeEngine.start: pass memory or stm, not both")
            if self.use_cuda_graphs and not self._graph_failed:
                logits = self._start_graphed([slot], [prompt], stm.unsqueeze(1))
                if logits is not None:
                    return logits[0]
            memory = self.decoder.project_memory(stm.unsqueeze(1).to(self.device, self.cache.k.dtype))
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
        row = self.cache.row_view(slot, slot + 1, static=False)  # prefill attends over the prompt only
        row.lengths.zero_()
        out = self.decoder(
            prompt[None].to(self.device), memory=self._memory_rows(slot, slot + 1), cache=row, compute_logits=False
        )
        self.slot_length[slot] = length
        self.live[slot] = True
        return self.decoder.lm_head(out.hidden[0, -1])

    @torch.no_grad()
    def start_batch(
        self,
        slots: Sequence[int],
        prompts: Sequence[Sequence[int] | torch.Tensor],
        *,
        stm: torch.Tensor | Sequence[torch.Tensor] | None = None,
        memory: list[MemoryKV | None] | None = None,
    ) -> torch.Tensor:
        """Prefill several prompts into their ``slots`` in one forward pass; return (n, V) first-token logits.
        ``stm`` may also be the n sessions' (L, S, D) memories, stacked here (on CUDA straight into the graph's
        staging buffer).

        Queries that arrive together are prefilled together: the prompts are right-padded to the longest, run
        through the decoder once (padding masked as keys), and each row's keys/values and memory K/V are copied
        into its slot. ``stm`` is (L, n, S, D) (projected here, in the same pass) or ``memory`` the per-layer K/V
        of batch n; neither for a decoder without memory. One prompt alone takes `start` (a graph on CUDA).
        """
        n = len(slots)
        if n != len(prompts):
            raise ValueError(f"start_batch: {n} slots for {len(prompts)} prompts")
        if stm is not None and memory is not None:
            raise ValueError("DecodeEngine.start_batch: pass memory or stm, not both")
        if n == 0:
            return torch.empty(0, self.decoder.lm_head.out_features, device=self.device)
        # Lists stay lists: padded in Python, one tensor for the whole batch (`pad_rows`).
        rows = [p if isinstance(p, torch.Tensor) else list(p) for p in prompts]
        per_session = stm is not None and not isinstance(stm, torch.Tensor)
        if n == 1:
            one_memory = None if memory is None else [None if kv is None else (kv[0][:1], kv[1][:1]) for kv in memory]
            one_stm = None if stm is None else stm[0] if per_session else stm[:, 0]
            return self.start(slots[0], torch.as_tensor(rows[0], dtype=torch.long), one_memory, stm=one_stm)[None]
        if len(set(slots)) != n:
            raise ValueError(f"start_batch: slots {list(slots)} repeat a slot")
        for slot, row in zip(slots, rows, strict=True):
            if not 0 <= slot < self.max_slots:
                raise ValueError(f"slot={slot} is outside 0..{self.max_slots - 1}")
            if self.live[slot]:
                raise ValueError(f"slot {slot} is live; release it first")
            if not 1 <= len(row) < self.capacity:
                raise ValueError(f"prompt of {len(row)} tokens must be within 1..{self.capacity - 1} (capacity)")
        if stm is not None and self.use_cuda_graphs and not self._graph_failed:
            logits = self._start_graphed(slots, rows, stm if per_session else stm.to(self.device))
            if logits is not None:
                return logits
        if per_session:
            stm = torch.stack(list(stm), dim=1)
        if stm is not None:
            memory = self.decoder.project_memory(stm.to(self.device, self.cache.k.dtype))
        index = to_device_async(list(slots), self.device)
        if memory is not None:
            self._ensure_memory(memory)
            for buffers, kv in zip(self.memory, memory, strict=True):
                if buffers is not None:
                    buffers[0].index_copy_(0, index, kv[0])
                    buffers[1].index_copy_(0, index, kv[1])
        lengths = [len(r) for r in rows]
        longest = max(lengths)
        ids = pad_rows(rows, n, longest).to(self.device, non_blocking=True)
        length_t = to_device_async(lengths, self.device)
        valid = torch.arange(longest, device=self.device)[None, :] < length_t[:, None]
        stage = self.decoder.new_cache(n, longest)  # attends over the prompts only: n x T x T, not x capacity
        out = self.decoder(ids, attention_mask=valid, memory=memory, cache=stage, compute_logits=False, validate=False)
        # Rows land in their slots; positions past a row's length hold padding the row's own steps overwrite.
        self.cache.k[:, index, :, :longest] = stage.k
        self.cache.v[:, index, :, :longest] = stage.v
        self.cache.lengths[index] = length_t
        last = out.hidden[torch.arange(n, device=self.device), length_t - 1]
        for slot, length in zip(slots, lengths, strict=True):
            self.slot_length[slot] = length
            self.live[slot] = True
        return self.decoder.lm_head(last)

    def _start_graphed(self, slots: Sequence[int], rows: Sequence[torch.Tensor], stm: torch.Tensor) -> torch.Tensor | None:
        """Prefill ``rows`` into ``slots`` with a captured graph per (batch bucket, length bucket); None to go eager.

        The rows are staged in a cache of the bucket's batch (padding rows: one pad token, ignored); the graph
        projects the memory, prefills, and copies each row's keys/values, length and memory K/V into its slot
        (`_prefill`). The host makes one tensor and a handful of torch calls whatever the batch: in a server each
        torch call may hand the GIL to the event loop's thread. ``stm`` is (L, n, S, D).
        """
        n = len(slots)
        lengths = [len(r) for r in rows]
        if any(not 0 <= s < self.max_slots or self.live[s] for s in slots) or len(set(slots)) != n:
            return None  # let the eager path raise its precise error
        if any(not 1 <= length < self.capacity for length in lengths):
            return None
        batch, bucket = self._prefill_key(n, max(lengths))
        if batch is None or bucket is None:
            return None
        stage, _ = self._stage_buffers(batch, stm)
        inputs = self._prefill_inputs(batch, bucket)
        # The padded ids, the lengths and the target slots in one host tensor (pinned as it is made) and one copy
        # (padding rows: one token, written to the spare row); ids already on the device are staged there.
        meta = lengths + [1] * (batch - n) + list(slots) + [self.max_slots] * (batch - n)
        if all(isinstance(row, torch.Tensor) and row.device == self.device for row in rows):
            inputs["ids"].zero_()
            for i, row in enumerate(rows):
                inputs["ids"][i, : lengths[i]] = row
            inputs["meta"].copy_(to_device_async(meta, self.device))
        else:
            flat = padded_flat([r.tolist() if isinstance(r, torch.Tensor) else r for r in rows], batch, bucket)
            flat.extend(meta)
            inputs["flat"].copy_(host_ids(flat, pin=self.device.type == "cuda"), non_blocking=True)
        if not isinstance(stm, torch.Tensor):  # the sessions' (L, S, D) memories
            staged = stage["stm"]
            if n == batch and all(m.device == staged.device and m.dtype == staged.dtype for m in stm):
                torch.stack(list(stm), dim=1, out=staged)  # straight into the staging buffer
            else:
                stage["stm"][:, :n].copy_(torch.stack(list(stm), dim=1))
        elif n == batch:
            stage["stm"].copy_(stm)
        else:
            stage["stm"][:, :n].copy_(stm)
        graph = self._prefill_graphs.get((batch, bucket)) or self._capture_prefill(batch, bucket)
        if graph is None:
            return None
        graph[0].replay()  # prefills and moves each row into its slot: cache keys/values, length, memory K/V
        for slot, length in zip(slots, lengths, strict=True):
            self.slot_length[slot] = length
            self.live[slot] = True
        return graph[1][:n]

    def _prefill_key(self, n: int, tokens: int) -> tuple[int | None, int | None]:
        """The (batch bucket, length bucket) of a prefill of ``n`` prompts of at most ``tokens`` tokens (None past
        the buckets: eager)."""
        return (next((b for b in self.buckets if b >= n), None),
                next((b for b in PREFILL_BUCKETS if b >= tokens and b < self.capacity), None))

    @torch.no_grad()
    def capture_prefill(self, n: int, tokens: int, stm: torch.Tensor) -> bool:
        """Capture now the prefill graph that ``n`` prompts of at most ``tokens`` tokens use, not when a prefill
        first needs it (a capture takes tens of ms; a server's lane, and every session, waits through it).
        ``stm`` (L, n, S, D) gives the memory's shape and dtype. True when the graph is ready; False on the CPU,
        past the buckets, or when capture failed (prefills then run eagerly, as they would have)."""
        if not self.use_cuda_graphs or self._graph_failed:
            return False
        batch, bucket = self._prefill_key(n, tokens)
        if batch is None or bucket is None:
            return False
        self._stage_buffers(batch, stm)
        if (batch, bucket) in self._prefill_graphs:
            return True
        inputs = self._prefill_inputs(batch, bucket)  # the warm-ups prefill one token per row into the spare row
        inputs["ids"].zero_()
        inputs["length"].fill_(1)
        inputs["slots"].fill_(self.max_slots)
        return self._capture_prefill(batch, bucket) is not None

    def _stage_buffers(self, batch: int, stm: torch.Tensor | Sequence[torch.Tensor]):
        """The staging buffers and cache of a prefill of ``batch`` rows: views of one set made for ``max_slots``
        rows, shared by every batch bucket (prefills run one at a time and their rows are copied into the slots
        inside the replay), so the stages take one set of buffers, not one per bucket (at ~1B and 64 slots the
        per-bucket copies of the KV cache and the STMs were gigabytes). ``stm`` (L, n, S, D), or n (L, S, D)
        memories, gives the memory's shape."""
        if batch not in self._stages:
            layers, slots, dim = (stm.shape[0], *stm.shape[2:]) if isinstance(stm, torch.Tensor) else stm[0].shape
            if self._stage_store is None:
                rows, longest = self.max_slots, max(PREFILL_BUCKETS)
                # Not static: a prefill bucket of T tokens attends over T keys (its shapes are fixed by the bucket).
                self._stage_store = (
                    {
                        "stm": torch.zeros(layers * rows * slots * dim, dtype=self.cache.k.dtype, device=self.device),
                        # ids (batch x bucket), lengths (batch), slots (batch): one flat buffer, one copy per prefill
                        "inputs": torch.zeros(rows * (longest + 2), dtype=torch.long, device=self.device),
                    },
                    self.decoder.new_cache(rows, self.capacity),
                )
            store, cache = self._stage_store
            # Leading parts of the flat buffers: contiguous views of the batch's shapes.
            self._stages[batch] = (
                {"stm": store["stm"][: layers * batch * slots * dim].view(layers, batch, slots, dim)},
                cache.row_view(0, batch),
            )
        return self._stages[batch]

    def _prefill_inputs(self, batch: int, bucket: int) -> dict[str, torch.Tensor]:
        """The inputs of the prefill graph of ``(batch, bucket)``: views of the leading part of one flat buffer,
        ``ids`` (batch, bucket), then ``length`` and ``slots`` (batch each; ``meta``: both), ``flat``: all of it."""
        store = self._stage_store[0]["inputs"]
        ids = batch * bucket
        flat = store[: ids + 2 * batch]
        return {"flat": flat, "ids": flat[:ids].view(batch, bucket), "meta": flat[ids:],
                "length": flat[ids : ids + batch], "slots": flat[ids + batch :]}

    def _prefill(self, batch: int, bucket: int):
        """The captured prefill: memory K/V projected from the staged STMs, the prompts through the decoder into the
        stage cache, the first-token logits; then every row moved into its slot (padding rows into the spare row
        ``max_slots``): its keys/values up to the bucket (later positions are past its length, masked, and
        overwritten as it decodes), its length and its memory K/V. Inside the graph, the moves cost the host
        nothing."""
        stage, cache = self._stages[batch]
        inputs = self._prefill_inputs(batch, bucket)
        cache.written = 0  # host-side capacity counter only; the graph reads nothing from it
        cache.lengths.zero_()
        memory = self.decoder.project_memory(stage["stm"])
        ids, length, slots = inputs["ids"], inputs["length"], inputs["slots"]
        valid = torch.arange(bucket, device=self.device)[None, :] < length[:, None]
        out = self.decoder(ids, attention_mask=valid, memory=memory, cache=cache, compute_logits=False,
                           validate=False)
        last = out.hidden.gather(1, (length - 1)[:, None, None].expand(batch, 1, out.hidden.shape[-1]))
        logits = self.decoder.lm_head(last[:, 0])
        self._ensure_memory(memory)  # made by the first warm-up run, outside the capture
        for buffers, kv in zip(self.memory, memory, strict=True):
            if buffers is not None:
                buffers[0].index_copy_(0, slots, kv[0])
                buffers[1].index_copy_(0, slots, kv[1])
        self.cache.k[:, :, :, :bucket].index_copy_(1, slots, cache.k[:, :, :, :bucket])
        self.cache.v[:, :, :, :bucket].index_copy_(1, slots, cache.v[:, :, :, :bucket])
        self.cache.lengths.index_copy_(0, slots, length)
        return logits, memory

    def _capture_prefill(self, batch: int, bucket: int):
        try:
            graph, (logits, _) = self.graph_pool.capture(lambda: self._prefill(batch, bucket))
        except Exception as exc:
            log.warning("CUDA graph capture of prefill (batch %d, length %d) failed (%s); prefilling eagerly",
                        batch, bucket, exc)
            self._graph_failed = True
            return None
        # The logits stay referenced (read after each replay); the memory K/V are moved into the slots inside.
        self._prefill_graphs[(batch, bucket)] = (graph, logits)
        return self._prefill_graphs[(batch, bucket)]

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
    def step(self, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Feed ``tokens`` (bucket,) — one per slot of the current bucket — and return (bucket, V) logits.

        ``tokens=None`` feeds what the caller already wrote into the engine's own token buffer (``self.tokens``,
        one entry per slot), which saves a copy per step."""
        b = self.bucket()
        for slot in range(b):
            if self.live[slot]:
                if self.slot_length[slot] >= self.capacity - 1:
                    raise ValueError(f"slot {slot} is full (capacity={self.capacity}); release it")
                self.slot_length[slot] += 1
        if tokens is not None:
            self.tokens[:b].copy_(tokens[:b])
        key = self._step_key(b)
        if self.use_cuda_graphs and not self._graph_failed:
            graph = self._graphs.get(key) or self._capture(key)
            if graph is not None:
                graph[0].replay()
                return graph[1]
        return self._step(key)

    @torch.no_grad()
    def capture_steps(self, stm: torch.Tensor | None = None) -> int:
        """Capture now the decode-step graph of every batch bucket, not when a step first reaches the bucket (a
        capture takes tens of ms; a server's lane, and every session, waits through it). The step reads the
        engine's memory K/V buffers, so they must exist before its capture: ``stm`` (L, 1, S, D) gives their shape
        and dtype when no prefill has allocated them yet. Safe while slots are live (the warm-ups write at or past
        each row's length, which the next real write overwrites). Returns how many graphs were captured (0 on the
        CPU or once a capture failed: steps then run eagerly, as they would have)."""
        if not self.use_cuda_graphs or self._graph_failed:
            return 0
        if self.memory is None and stm is not None:
            self._ensure_memory(self.decoder.project_memory(stm.to(self.device, self.cache.k.dtype)))
        before = len(self._graphs)
        for b in self.buckets:
            key = self._step_key(b)
            if key not in self._graphs and self._capture(key) is None:
                break
        return len(self._graphs) - before

    def _step_key(self, b: int):
        """What fixes a step's shapes (one captured graph each): here the batch bucket; a subclass may add more."""
        return b

    def _step(self, b: int) -> torch.Tensor:
        logits = self._decode(self.tokens[:b, None], self._memory_rows(0, b), self.cache.row_view(0, b))
        if self.argmax_into_tokens:
            torch.argmax(logits, dim=-1, out=self.tokens[:b])
        return logits

    def _decode_impl(self, tokens: torch.Tensor, memory, cache) -> torch.Tensor:
        return self.decoder(tokens, memory=memory, cache=cache, validate=False).logits[:, -1]

    def _capture(self, b) -> tuple[torch.cuda.CUDAGraph, torch.Tensor] | None:
        try:
            graph, logits = self.capture_graph(lambda: self._step(b))
        except Exception as exc:
            log.warning("CUDA graph capture failed for step %s (%s); decoding eagerly", b, exc)
            self._graph_failed = True
            return None
        # Capture recorded the step without running it; the first replay (by the caller) runs it.
        self._graphs[b] = (graph, logits)
        return self._graphs[b]

    def capture_graph(self, run):
        """``run()`` captured as a CUDA graph: ``(graph, its output)``, after two warm-up runs on a side stream
        (lazy initialisation happens outside the capture). What the warm-ups write into the cache lies at or past
        each row's length, where the next real write goes; their advance of the lengths and what they wrote into
        the token buffer are undone. Raises what the capture raised, with both restored."""
        saved_lengths, saved_tokens = self.cache.lengths.clone(), self.tokens.clone()

        def restore() -> None:  # the warm-ups' advance of the lengths, and their argmax (`argmax_into_tokens`)
            self.cache.lengths.copy_(saved_lengths)
            self.tokens.copy_(saved_tokens)

        try:
            return self.graph_pool.capture(run, before_run=restore)
        finally:
            restore()
