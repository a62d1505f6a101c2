"""The memory update of a batch of finished interactions, as a CUDA graph per (batch, length) bucket.

    updater = MemoryUpdater(model)
    new_stm = updater(stm, interactions)       # stm (L, n, S, D); interactions: n lists of token ids

Eagerly, one update is hundreds of small kernels (encoder + memory attention), so its cost is launch overhead
(about 20 ms for the nano on an H200, for one interaction as for 64). On CUDA each (batch bucket, length bucket)
is captured once and replayed: the interactions are right-padded into static buffers, padding rows have no real
token (so they keep their STM and are ignored) and the result rows are copied out. On the CPU, or where capture
fails, the same update runs eagerly. Results equal `RxT.update_memory` on the unpadded batch (up to the float
reductions of a padded shape).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from rxt.decode_engine import CAPTURE_MODE, pad_rows
from rxt.model import RxT

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LENGTH_BUCKETS = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def _bucket(value: int, buckets: Sequence[int], limit: int) -> int:
    return next((b for b in buckets if b >= value), max(value, limit))


class MemoryUpdater:
    def __init__(self, model: RxT, *, pad_id: int = 0, use_cuda_graphs: bool | None = None) -> None:
        self.model = model
        self.pad_id = pad_id
        self.device = model.embedding.weight.device
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        self.use_cuda_graphs = use_cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor]]] = {}
        self._failed = False
        # Update graphs are captured on a stream of their own: cuBLAS keeps a workspace per (handle, stream), and
        # graphs captured on PyTorch's shared default capture stream would all use the one workspace, so an update
        # replayed beside a decode step (the runtime runs updates on a side stream) would race it.
        self._capture_stream: torch.cuda.Stream | None = None

    @property
    def graphed(self) -> bool:
        """Whether updates run as captured graphs (CUDA, and no capture has failed)."""
        return self.use_cuda_graphs and not self._failed

    @torch.no_grad()
    def __call__(self, stm: torch.Tensor, interactions: Sequence[Sequence[int]]) -> torch.Tensor:
        n = len(interactions)
        max_len = self.model.config.max_seq_len
        rows = [list(ids)[:max_len] for ids in interactions]
        longest = max((len(r) for r in rows), default=1)
        if self.use_cuda_graphs and not self._failed:
            key = self._key(n, longest)
            graph = self._graphs.get(key) or self._capture(key, stm)
            if graph is not None:
                buffers = graph[1]
                ids, valid = self._padded(rows, key[0], key[1])
                buffers["ids"].copy_(ids, non_blocking=True)
                buffers["valid"].copy_(valid, non_blocking=True)
                buffers["stm"][:, :n].copy_(stm)
                graph[0].replay()
                return buffers["out"][:, :n].clone()  # out of place: the buffer is reused by the next replay
        ids, valid = self._padded(rows, n, longest)
        return self.model.update_memory(stm, ids.to(self.device), valid.to(self.device), validate=False)

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
        return (self._graphs.get(key) or self._capture(key, stm)) is not None

    def _padded(self, rows: list[list[int]], batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        # A fixed number of torch calls whatever the batch: each one hands the GIL to a server's other threads.
        ids = pad_rows(rows, batch, length, self.pad_id)
        lengths = torch.tensor([len(row) for row in rows] + [0] * (batch - len(rows)), dtype=torch.long)
        valid = torch.arange(length)[None, :] < lengths[:, None]
        if self.device.type == "cuda":
            ids, valid = ids.pin_memory(), valid.pin_memory()
        return ids, valid

    def _capture(self, key: tuple[int, int], stm: torch.Tensor):
        batch, length = key
        model = self.model
        buffers = {
            "stm": torch.zeros((stm.shape[0], batch, *stm.shape[2:]), dtype=stm.dtype, device=self.device),
            "ids": torch.full((batch, length), self.pad_id, dtype=torch.long, device=self.device),
            "valid": torch.zeros((batch, length), dtype=torch.bool, device=self.device),
        }
        buffers["valid"][:, 0] = True  # warm-up on a real token per row
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up: lazy initialisation (RoPE tables, workspaces) outside the capture
                    model.update_memory(buffers["stm"], buffers["ids"], buffers["valid"], validate=False)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            if self._capture_stream is None:
                self._capture_stream = torch.cuda.Stream(device=self.device)
            with torch.cuda.graph(graph, stream=self._capture_stream, capture_error_mode=CAPTURE_MODE):
                buffers["out"] = model.update_memory(buffers["stm"], buffers["ids"], buffers["valid"], validate=False)
        except Exception as exc:
            log.warning("CUDA graph capture of the memory update %s failed (%s); updating eagerly", key, exc)
            self._failed = True
            return None
        self._graphs[key] = (graph, buffers)
        return self._graphs[key]
