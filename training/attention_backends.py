"""Attention kernels for steps whose shapes change from batch to batch.

PyTorch's SDPA may pick the cuDNN attention backend on Hopper GPUs. cuDNN builds an execution plan for every new
(batch, heads, length) shape, on the host. A packed joint/SFT step always has the same shape, so the plan is built once
and reused. An episode step has many shapes: turns per batch, turn width, and rows that change with them. There the
plan building dominates. On an H200, one nano SMAT step at 128 episodes x up to 19 turns spent 390 ms of host time in
`_cudnn_attention_forward/backward`, out of 783 ms, while the GPU was busy for 120 ms.
(`benchmarks/smat_cudnn_probe.py`, result in `benchmarks/results/smat_cudnn_probe.json`.)

`shape_varying_attention()` allows every SDPA backend except cuDNN. Flash and memory-efficient attention choose
their kernels per call at almost no host cost. Without cuDNN a masked call with grouped key/value heads (GQA, SQA)
would run on the MATH backend (neither fused kernel takes both), so the block also expands the key/value heads of
such calls (`rxt.grouped_sdpa.expand_masked_gqa`): the memory-efficient kernel then takes them. Results are the same
up to float rounding, so CPU tests see no difference in values.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch.nn.attention import SDPBackend, sdpa_kernel

from rxt.grouped_sdpa import expand_masked_gqa

#: every SDPA backend but cuDNN (its per-shape plan building is host time on shape-varying steps)
SHAPE_VARYING_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def shape_varying_attention() -> Iterator[None]:
    """SDPA restricted to `SHAPE_VARYING_BACKENDS` inside the block (forward, and the backward it records), masked
    grouped-query calls with their key/value heads expanded (`expand_masked_gqa`)."""
    with sdpa_kernel(SHAPE_VARYING_BACKENDS), expand_masked_gqa():
        yield


__all__ = ["SHAPE_VARYING_BACKENDS", "shape_varying_attention"]
