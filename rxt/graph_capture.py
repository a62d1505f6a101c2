"""CUDA-graph capture into a memory pool that a family of graphs shares.

A graph captured with a pool of its own keeps the peak of its own intermediates for as long as it lives. A runtime
captures one graph per shape bucket (decode batch, prefill batch x length, update batch x length), so the pools add
up: the ~1B configuration at 64 sessions held 74 GB in graph pools and ran out of memory capturing. Graphs that
never run at the same time can share one pool: a capture reuses the blocks the earlier captures freed (their
intermediates), so the family holds about its largest graph's intermediates, not the sum of all of them.

Sharing is safe when
1. the graphs of a family replay one at a time, in stream order (one stream, or streams that wait on each other):
   two of them running at once would write into each other's intermediates; and
2. every graph's outputs stay referenced while the graph may replay: a freed output block could be handed to a
   later capture, and the two graphs would then overwrite each other. (Outputs are what the caller reads after a
   replay; the families here keep them in their graph tables.)

The runtime keeps two families: the lane's (decode steps and prefills, all on the lane's stream) and the memory
update's (its passes run on a stream of their own, beside the lane's, so they must not share the lane's pool).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# Captures run on the serving lane while other threads (store commits copying STMs off the device) keep using
# CUDA; "thread_local" restricts only the capturing thread, so their calls neither fail nor spoil the capture.
CAPTURE_MODE = "thread_local"


class GraphPool:
    """One memory pool for a family of CUDA graphs (see the module docstring for when sharing is safe). The pool
    handle is made on the first capture, so building one costs nothing on the CPU."""

    def __init__(self) -> None:
        self._handle = None
        self.captures = 0  # graphs captured into this pool so far

    def handle(self):
        if self._handle is None:
            self._handle = torch.cuda.graph_pool_handle()
        return self._handle

    def capture(self, run: Callable[[], Any], *, stream: torch.cuda.Stream | None = None,
                before_run: Callable[[], None] | None = None, warmups: int = 2) -> tuple[torch.cuda.CUDAGraph, Any]:
        """``run()`` captured into this pool: ``(graph, what run returned during capture)``. ``warmups`` runs come
        first on a side stream (lazy initialisation, cuBLAS workspaces and RoPE tables, happens outside the
        capture); ``before_run()`` is called before each of them and before the capture (e.g. to undo what a
        warm-up advanced). ``stream``: the capture stream (None: PyTorch's). Raises what the capture raised."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmups):
                if before_run is not None:
                    before_run()
                run()
        torch.cuda.current_stream().wait_stream(side)
        if before_run is not None:
            before_run()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.handle(), stream=stream, capture_error_mode=CAPTURE_MODE):
            out = run()
        self.captures += 1
        return graph, out


__all__ = ["CAPTURE_MODE", "GraphPool"]
