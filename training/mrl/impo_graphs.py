"""The IMPO optimizer step as a CUDA graph per bucket shape: loss, backward, clipping and AdamW in one replay.

An IMPO minibatch is a few thousand small kernels (two encoders, the memory attention, the decoder, the LM head at
the action tokens, the loss terms, their backward, the clipping, the optimizer): on a GPU the step costs what
the host spends launching them, not what the device spends running them. The minibatches of
`training.mrl.impo_static` have few distinct shapes (rows fixed, widths and action entries bucketed), so each
shape's whole step is captured once (the PyTorch "whole network capture" pattern) and replayed.

- The first step of a shape (per set of trainable parameters and with/without a KL term) runs eagerly: a real
  optimizer step, which also initialises what a capture must not (the optimizer's state). The second is captured
  (after a forward and backward without optimizer step on the capture stream, for its lazy initialisation;
  gradients dropped) and replayed from then on, with its inputs copied into the graph's static buffers. Every
  optimizer step is a real step: the sequence of updates is the eager path's, the kernels the same.
- The optimizer must be capturable (`torch.optim.AdamW(capturable=True)`, its step count on the device; the
  learner sets it) and its learning rate fixed while a graph lives (it is part of the key).
- A capture that fails leaves that shape eager (logged once); the result is the same, only slower.
- At most ``max_graphs`` graphs are kept (least recently used dropped; each holds its own memory pool).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch

from training.mrl.impo_static import StaticMinibatch

log = logging.getLogger(__name__)

StepFn = Callable[[StaticMinibatch, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None],
                  tuple[torch.Tensor, torch.Tensor]]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]  # the static input buffers, by name
    smb: StaticMinibatch  # over the static buffers
    row: torch.Tensor  # the step's statistics row (static output)
    log_probs: torch.Tensor  # the step's new log-probs (static output)


class GraphedSteps:
    """Runs ``step(smb, old, adv, returns, reference) -> (stats row, new log-probs)`` (one whole optimizer step)
    eagerly the first time a key is met, then as a captured CUDA graph."""

    def __init__(self, step: StepFn, optimizer: torch.optim.Optimizer, parameters: Callable[[], list],
                 max_graphs: int = 16, warm: Callable[..., None] | None = None) -> None:
        self.step = step
        self.warm = warm  # forward + backward of a step, no optimizer step: warms the capture stream
        self.stream: torch.cuda.Stream | None = None  # the capture stream (its warm-up runs there too)
        self.optimizer = optimizer
        self.parameters = parameters
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: set[tuple] = set()
        self.failed: set[tuple] = set()
        self.captures = 0
        self.replays = 0

    def key(self, smb: StaticMinibatch, reference: torch.Tensor | None) -> tuple:
        params = tuple(id(p) for p in self.parameters())
        hyper = tuple((g["lr"] if not torch.is_tensor(g["lr"]) else id(g["lr"]), g.get("weight_decay"))
                      for g in self.optimizer.param_groups)
        return (smb.shape_key, reference is None, smb.prev_stm.dtype, params, hyper)

    def __call__(self, smb: StaticMinibatch, old: torch.Tensor, adv: torch.Tensor, returns: torch.Tensor,
                 reference: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        key = self.key(smb, reference)
        if key not in self.seen or key in self.failed:
            self.seen.add(key)
            return self.step(smb, old, adv, returns, reference)
        graph = self.graphs.get(key)
        inputs = {**smb.tensors(), "old": old, "adv": adv, "returns": returns}
        if reference is not None:
            inputs["reference"] = reference
        if graph is None:
            graph = self._capture(key, inputs)
            if graph is None:
                return self.step(smb, old, adv, returns, reference)
        else:
            self.graphs.move_to_end(key)
            for name, value in inputs.items():
                graph.inputs[name].copy_(value, non_blocking=True)
        graph.graph.replay()
        self.replays += 1
        return graph.row, graph.log_probs

    def _capture(self, key: tuple, inputs: dict[str, torch.Tensor]) -> _Graph | None:
        static = {name: value.clone() for name, value in inputs.items()}
        smb = StaticMinibatch(**{name: static[name] for name in StaticMinibatch.__dataclass_fields__})
        while len(self.graphs) >= self.max_graphs:
            self.graphs.popitem(last=False)
        graph = torch.cuda.CUDAGraph()
        args = (smb, static["old"], static["adv"], static["returns"], static.get("reference"))
        if self.stream is None:
            self.stream = torch.cuda.Stream()
        try:
            if self.warm is not None:  # lazy initialisation on the capture stream, outside the capture; the
                # weights do not move (no optimizer step) and the gradients are dropped
                self.stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(self.stream):
                    self.warm(*args)
                torch.cuda.current_stream().wait_stream(self.stream)
            self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
            torch.cuda.synchronize()
            with torch.cuda.graph(graph, stream=self.stream):
                row, log_probs = self.step(*args)
        except Exception:  # this shape stays eager: same result, slower
            log.exception("IMPO step capture failed for shape %s; running it eagerly", key[0])
            self.failed.add(key)
            self.optimizer.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            return None
        self.captures += 1
        self.graphs[key] = captured = _Graph(graph, static, smb, row, log_probs)
        return captured


__all__ = ["GraphedSteps"]
