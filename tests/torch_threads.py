"""`one_thread()`: run a block on one torch thread. Tiny models run faster so, and far faster when other processes
share the cores."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
