"""`benchmarks/stack_sampler.py`: a busy thread's time goes to the function it spins in, a waiting thread is idle."""

from __future__ import annotations

import threading
import time


def _spin(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(200))


def test_busy_and_idle_threads(load_script):
    sampler_module = load_script("benchmarks/stack_sampler.py")
    stop, never = threading.Event(), threading.Event()
    busy = threading.Thread(target=_spin, args=(stop,), name="busy")
    idle = threading.Thread(target=never.wait, args=(5.0,), name="idle")
    busy.start()
    idle.start()
    try:
        with sampler_module.StackSampler(interval=0.002) as sampler:
            time.sleep(0.3)
    finally:
        stop.set()
        never.set()
        busy.join()
        idle.join()
    report = sampler.report(top=5)
    threads = report["threads"]
    assert "idle" not in threads  # every sample of it waits in threading.py
    spun = threads["busy"]
    assert spun["samples"] > 20 and spun["busy_fraction"] > 0.9
    inclusive = dict(spun["inclusive"])
    assert inclusive[next(k for k in inclusive if k.endswith(" _spin"))] > 0.9
    assert report["elapsed_s"] >= 0.3
