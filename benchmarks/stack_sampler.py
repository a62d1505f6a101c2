"""A sampling profiler of Python threads, in pure Python: where a multi-threaded host path (the runtime's lane, the
collector, the commit writers) spends its wall time, on a machine where py-spy or yappi may not be installed.

Every ``interval`` seconds a daemon thread reads ``sys._current_frames()`` and counts, per thread, the innermost
frame (self) and every frame on the stack (inclusive), as ``file:line function`` of the function's first line.
Time in C (a torch op, a device synchronisation) counts for the Python frame that called it. A sample whose
innermost frame is a wait of `threading`/`queue`/`selectors` counts as idle. Sampling holds the GIL for a few
microseconds per thread per sample: at 1 ms it slows the sampled threads by well under a few per cent.

    with StackSampler() as sampler:
        work()
    report = sampler.report(top=25)   # {thread name: {"samples", "busy_fraction", "self": [...], "inclusive": [...]}}
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter

IDLE_FILES = ("threading.py", "queue.py", "selectors.py")


def _where(code) -> str:
    name = code.co_filename
    for marker in ("/rxnn_runtime/", "/rxt/", "/training/", "/benchmarks/", "/site-packages/", "/lib/python"):
        if marker in name:
            name = name[name.index(marker) + 1:]
            break
    return f"{name}:{code.co_firstlineno} {code.co_name}"


class StackSampler:
    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.samples: Counter[str] = Counter()
        self.idle: Counter[str] = Counter()
        self.own: dict[str, Counter[str]] = {}
        self.inclusive: dict[str, Counter[str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.elapsed = 0.0

    def __enter__(self) -> StackSampler:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._stop.clear()
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="stack-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.elapsed = time.perf_counter() - self._started

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                name = names.get(ident, str(ident))
                self.samples[name] += 1
                if frame.f_code.co_filename.endswith(IDLE_FILES):
                    self.idle[name] += 1
                    continue
                own = self.own.setdefault(name, Counter())
                inclusive = self.inclusive.setdefault(name, Counter())
                own[_where(frame.f_code)] += 1
                seen = set()
                while frame is not None:
                    key = _where(frame.f_code)
                    if key not in seen:
                        seen.add(key)
                        inclusive[key] += 1
                    frame = frame.f_back

    def report(self, top: int = 25) -> dict:
        """Per thread with busy samples: samples, busy fraction, and the ``top`` functions by self and by inclusive
        samples, each as ``[where, fraction of the thread's samples]``."""
        out = {}
        for name, total in self.samples.most_common():
            busy = total - self.idle[name]
            if busy <= 0:
                continue
            out[name] = {
                "samples": total, "busy_fraction": busy / total,
                "self": [[k, v / total] for k, v in self.own[name].most_common(top)],
                "inclusive": [[k, v / total] for k, v in self.inclusive[name].most_common(top)],
            }
        return {"interval_s": self.interval, "elapsed_s": self.elapsed, "threads": out}


__all__ = ["StackSampler"]
