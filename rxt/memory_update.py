"""The memory update of a batch of finished interactions, as a CUDA graph per (batch, length) bucket.

    updater = MemoryUpdater(model)
    new_stm = updater(stm, interactions)       # stm (L, n, S, D) or n (L, S, D) tensors; interactions: n id lists

Eagerly, one update is hundreds of small kernels (encoder + memory attention), so its cost is launch overhead
(about 20 ms for the nano on an H200, for one interaction as for 64). On CUDA each (batch bucket, length bucket)
is captured once and replayed. What a replay does, and why:

- Shapes: the batch is padded to the next batch bucket and the interactions to the next length bucket. The length
  buckets are 1.5x apart past 32 (16, 32, 48, 64, 96, ...), so the encoder runs over at most a third more
  positions than the longest interaction (a 45-token turn: 48, not 64). Padding rows have no real token: their
  memory-attention keys attend to all positions (never NaN) and their rows are never read.
- Inputs: the interactions and their lengths travel to the device as one host tensor and one copy; the key mask
  is built inside the graph from the lengths. The sessions' STMs of a full bucket are stacked straight into the
  graph's input buffer (one op, no stacked copy first).
- Every row of the graphed pass has a real token, so the memory attention takes the padding mask as its stacked
  key mask (``key_bias``) and skips the "rows without tokens keep their STM" select, a full pass over the STM;
  a caller's empty interaction keeps its STM by a copy after the replay, on that rare call only.
- Memory: the graphs share one memory pool (`rxt.graph_capture`: the passes run one at a time, on one stream)
  and one set of input and output buffers sized for ``max_batch`` rows; each graph writes its result into the
  shared output buffer, from which the call copies the real rows out. (A pool and buffers per graph took tens of
  GB at ~1B.)

- Fusion (``compile_pass=True``): at 64 nano rows the pass is bound by the memory traffic of its STM-sized
  elementwise work (norms, the gates' means and blends: each a kernel that reads and writes the whole (L, B, S, D)
  STM), not by its matmuls. ``torch.compile`` fuses those into a few kernels, which the graph then captures. It is
  compiled once with dynamic shapes (one compile for every bucket but the single-row one), at the first capture.

On the CPU, or where capture fails, the same update runs eagerly on the unpadded batch. Results equal
`RxT.update_memory` on the unpadded batch (up to the float reductions of a padded shape).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from rxt.decode_engine import host_ids, pad_rows, padded_flat
from rxt.graph_capture import GraphPool
from rxt.model import RxT

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)


def _bucket(value: int, buckets: Sequence[int], limit: int) -> int:
    return next((b for b in buckets if b >= value), max(value, limit))


class MemoryUpdater:
    def __init__(self, model: RxT, *, pad_id: int = 0, use_cuda_graphs: bool | None = None,
                 max_batch: int | None = None, compile_pass: bool = False,
                 compile_backend: str | Callable = "inductor") -> None:
        """``max_batch``: the most interactions one call will pass (a runtime's slot count); the graphs' shared
        buffers are made for its batch bucket at once. None: sized by the first capture, remade (and the graphs
        captured again) if a later call needs a larger batch bucket. ``compile_pass``: the graphed pass fused by
        ``torch.compile`` before it is captured (see the module docstring; the eager path is never compiled), with
        ``compile_backend`` (a test traces it with a backend that counts the compiles)."""
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"MemoryUpdater max_batch={max_batch} must be >= 1")
        self.model = model
        self.pad_id = pad_id
        self.max_batch = max_batch
        self.device = model.embedding.weight.device
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._failed = False
        self.graph_pool = GraphPool()  # every update graph's intermediates in one pool
        self._store: dict[str, torch.Tensor] | None = None  # the flat buffers every graph's inputs/output view
        self._rows = 0  # the rows ``_store`` holds
        # Update graphs are captured on a stream of their own: cuBLAS keeps a workspace per (handle, stream), and
        # graphs captured on PyTorch's shared default capture stream would all use the one workspace, so an update
        # replayed beside a decode step (the runtime runs updates on a side stream) would race it.
        self._capture_stream: torch.cuda.Stream | None = None
        # fullgraph: a graph break would split the fused pass (and fall back to Python inside the capture)
        self._new_memory = (torch.compile(self._padded_update, dynamic=True, fullgraph=True, backend=compile_backend)
                            if compile_pass else self._padded_update)

    @property
    def graphed(self) -> bool:
        """Whether updates run as captured graphs (CUDA, and no capture has failed)."""
        return self.use_cuda_graphs and not self._failed

    @torch.no_grad()
    def __call__(self, stm: torch.Tensor | Sequence[torch.Tensor],
                 interactions: Sequence[Sequence[int]]) -> torch.Tensor:
        """The new STMs (L, n, S, D) of ``n`` interactions (lists of ids; longer than max_seq_len: truncated).
        ``stm``: the sessions' memories, (L, n, S, D) or a sequence of n (L, S, D) tensors."""
        n = len(interactions)
        max_len = self.model.config.max_seq_len
        rows = [ids if len(ids) <= max_len else ids[:max_len] for ids in interactions]
        lengths = [len(r) for r in rows]
        if self.use_cuda_graphs and not self._failed:
            key = self._key(n, max(lengths, default=1))
            graph = self._graphs.get(key) or self._capture(key, _shape_of(stm))
            if graph is not None:
                return self._replay(graph, key, stm, rows, lengths)
        stm = stm if isinstance(stm, torch.Tensor) else torch.stack(list(stm), dim=1)
        longest = max(lengths, default=1)
        ids = pad_rows(rows, n, longest, self.pad_id)
        valid = torch.arange(longest)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
        return self.model.update_memory(stm, ids.to(self.device), valid.to(self.device), validate=False)

    def _replay(self, graph, key: tuple[int, int], stm, rows: list, lengths: list[int]) -> torch.Tensor:
        # A fixed, small number of torch calls whatever the batch: in a server each one may hand the GIL to the
        # event loop's thread, and the lane then waits up to a switch interval to get it back.
        batch, length = key
        n = len(rows)
        buffers = graph[1]
        # One host tensor (pinned as it is made), one copy: the padded ids, then every row's length (padding: 0).
        flat = padded_flat(rows, batch, length, self.pad_id)
        flat.extend(lengths)
        flat.extend([0] * (batch - n))
        host = host_ids(flat, pin=self.device.type == "cuda")
        buffers["tokens"].copy_(host, non_blocking=True)
        stm_in, out = self._row_views(buffers, n)
        if isinstance(stm, torch.Tensor):
            stm_in.copy_(stm)
        elif n == batch and all(m.device == stm_in.device and m.dtype == stm_in.dtype for m in stm):
            torch.stack(list(stm), dim=1, out=stm_in)  # straight into the (contiguous) input buffer
        else:  # the rows of a part-filled bucket are not contiguous (or a memory needs a cast): stacked, copied
            stm_in.copy_(torch.stack(list(stm), dim=1))
        graph[0].replay()
        new = out.clone()  # out of the shared buffer, which the next replay overwrites
        empty = [i for i, size in enumerate(lengths) if size == 0]
        if empty:  # no token to write: the row keeps its memory (the graph masks no key of a row without tokens)
            index = torch.tensor(empty, dtype=torch.long, device=new.device)
            source = stm if isinstance(stm, torch.Tensor) else torch.stack(list(stm), dim=1)
            new.index_copy_(1, index, source.index_select(1, index).to(new.dtype))
        return new

    @staticmethod
    def _row_views(buffers: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` rows of the graph's STM input and output, made once per row count (a slice is a torch
        call too)."""
        views = buffers.setdefault("_rows", {})
        pair = views.get(n)
        if pair is None:
            pair = views[n] = (buffers["stm"][:, :n], buffers["out"][:, :n])
        return pair

    def _key(self, n: int, tokens: int) -> tuple[int, int]:
        """The (batch bucket, length bucket) of ``n`` interactions of at most ``tokens`` tokens."""
        return _bucket(n, BATCH_BUCKETS, n), min(_bucket(tokens, LENGTH_BUCKETS, tokens), self.model.config.max_seq_len)

    @torch.no_grad()
    def capture(self, n: int, tokens: int, stm: torch.Tensor) -> bool:
        """Capture now the graph that ``n`` interactions of at most ``tokens`` tokens use, not on first use (a
        capture takes tens of ms). ``stm`` (L, n, S, D) gives the memory's shape and dtype. True when the graph is
        ready; False on the CPU or when capture failed (updates then run eagerly, as they would have)."""
        if not self.use_cuda_graphs or self._failed:
            return False
        key = self._key(n, min(tokens, self.model.config.max_seq_len))
        return (self._graphs.get(key) or self._capture(key, _shape_of(stm))) is not None

    def _buffers(self, key: tuple[int, int], like: tuple[torch.Size, torch.dtype]) -> dict[str, torch.Tensor]:
        """The inputs and output of the graph of ``key``: leading parts of flat buffers shared by every graph
        (contiguous views of the key's shapes). ``like``: one session's STM shape (L, S, D) and its dtype."""
        batch, length = key
        (layers, slots, dim), dtype = like
        rows = max(batch, _bucket(self.max_batch or 1, BATCH_BUCKETS, self.max_batch or 1))
        if self._store is None or rows > self._rows or self._store["stm"].dtype != dtype:
            if self._graphs:  # they read the old buffers: captured again on their next use, into a new pool
                log.info("memory-update buffers grow to %d rows; the %d update graphs are captured again",
                         rows, len(self._graphs))
                self._graphs.clear()
                # A pool whose graphs are all gone is released: capturing into its handle again fails an internal
                # assert of the CUDA caching allocator (seen on an H200), so the new graphs get a pool of their own.
                self.graph_pool = GraphPool()
            width = layers * slots * dim * rows
            max_len = self.model.config.max_seq_len
            self._store = {
                "tokens": torch.zeros(rows * (max(max_len, LENGTH_BUCKETS[0]) + 1), dtype=torch.long,
                                      device=self.device),
                "stm": torch.zeros(width, dtype=dtype, device=self.device),
                "out": torch.zeros(width, dtype=dtype, device=self.device),
            }
            self._rows = rows
        store = self._store
        shape = (layers, batch, slots, dim)
        size = layers * batch * slots * dim
        tokens = store["tokens"][: batch * (length + 1)]
        return {"tokens": tokens, "ids": tokens[: batch * length].view(batch, length),
                "lengths": tokens[batch * length:], "stm": store["stm"][:size].view(shape),
                "out": store["out"][:size].view(shape)}

    @torch.no_grad()
    def _run(self, buffers: dict[str, torch.Tensor]) -> None:
        """The captured pass: encoder over the padded batch, memory attention, the result into ``out``."""
        buffers["out"].copy_(self._new_memory(buffers["ids"], buffers["lengths"], buffers["stm"],
                                              self.model.memory_attention.stackable()))

    def _padded_update(self, ids: torch.Tensor, lengths: torch.Tensor, stm: torch.Tensor,
                       stacked: bool) -> torch.Tensor:
        """The new STMs (L, B, S, D) of a padded batch: ``ids`` (B, T), ``lengths`` (B,) (every row at least one
        token), ``stm`` (L, B, S, D). ``stacked``: the memory attention's layer-batched path (`stackable`, decided
        outside so that a compiled pass sees a constant)."""
        model = self.model
        batch, length = ids.shape
        valid = torch.arange(length, device=ids.device)[None, :] < lengths[:, None]
        encoded = model.encode(ids, valid, validate=False)
        attention = model.memory_attention
        if stacked:
            # Every real row has a token, so no row needs its old STM back: the padding mask goes in as the stacked
            # rows' key mask (layer-major, a row without any valid key attends to all: never NaN).
            keys = valid | ~valid.any(dim=-1, keepdim=True)
            key_bias = keys[None].expand(model.config.num_layers, batch, length).reshape(-1, 1, 1, length)
            return attention(stm, encoded, key_bias=key_bias)
        return attention(stm, encoded, valid)

    def _capture(self, key: tuple[int, int], like: tuple[torch.Size, torch.dtype]):
        buffers = self._buffers(key, like)
        buffers["tokens"].zero_()
        buffers["lengths"].fill_(1)  # warm-up on a real token per row
        try:
            if self._capture_stream is None and self.device.type == "cuda":
                self._capture_stream = torch.cuda.Stream(device=self.device)
            graph, _ = self.graph_pool.capture(lambda: self._run(buffers), stream=self._capture_stream)
        except Exception as exc:
            log.warning("CUDA graph capture of the memory update %s failed (%s); updating eagerly", key, exc)
            self._failed = True
            return None
        self._graphs[key] = (graph, buffers)
        return self._graphs[key]


def _shape_of(stm: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Size, torch.dtype]:
    """One session's STM shape (L, S, D) and the dtype, from (L, n, S, D) or a sequence of (L, S, D)."""
    if isinstance(stm, torch.Tensor):
        return torch.Size((stm.shape[0], *stm.shape[2:])), stm.dtype
    return stm[0].shape, stm[0].dtype
