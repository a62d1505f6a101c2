"""Shared builders for runtime tests: a tiny RxT with the real default tokenizer."""

from __future__ import annotations

import threading
import time

import torch

from rxnn_runtime.messages import GenerationOptions, Query
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer


def tiny_model(seed: int = 0) -> tuple[RxT, RxTokenizer]:
    tokenizer = RxTokenizer.default()
    torch.manual_seed(seed)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128)).eval()
    with torch.no_grad():  # a non-trivial initial memory, so memory bugs show up in the tokens
        model.stm.initial.normal_(generator=torch.Generator().manual_seed(seed))
    return model, tokenizer


class EventLog:
    """Thread-safe list of events with a bounded wait."""

    def __init__(self) -> None:
        self.events = []
        self._cond = threading.Condition()

    def __call__(self, event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True


def record_plans(reactive) -> list:
    """Every `StepPlan` the runtime's executor launches from now on, in order (wraps ``executor.launch``)."""
    plans: list = []
    launch = reactive.executor.launch

    def recording_launch(plan, stm_of):
        plans.append(plan)
        return launch(plan, stm_of)

    reactive.executor.launch = recording_launch
    return plans


class FakePass:
    """Stands in for the CUDA event recorded after an update pass: ``query()`` says whether it is done,
    ``synchronize()`` waits for it (counted in ``waited``; ``fails``: raises as a failed pass would)."""

    def __init__(self, fails: bool = False):
        self.done, self.waited, self.fails = False, 0, fails

    def query(self):
        return self.done

    def synchronize(self):
        self.waited += 1
        if self.fails:
            raise RuntimeError("device-side assert")
        self.done = True


def start_short_and_long(reactive) -> EventLog:
    """Two sessions of one step, "short" (2 tokens) and "long" (12): the short one's memory update runs while the
    long one still decodes. Returns the log of the runtime's batches, connected."""
    batches = EventLog()
    reactive.batches.subscribe(batches)
    reactive.submit(Query("short", "hello", GenerationOptions(max_new_tokens=2)))
    reactive.submit(Query("long", "hello", GenerationOptions(max_new_tokens=12)))
    reactive.connect()
    return batches
