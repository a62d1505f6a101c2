"""Bounded session stores: LRU/TTL in memory, explicit retention on disk and in Redis, store health."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import torch

from rxnn_runtime.stores import MEMORY_RETENTION, InMemoryStore, Retention, SessionState, open_store
from rxnn_runtime.stores.directory import DirectoryStore


def state(sid: str, fill: float = 0.0) -> SessionState:
    return SessionState(sid, torch.full((2, 4, 8), fill))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_memory_store_is_bounded_by_default():
    store = InMemoryStore()
    assert store.retention == MEMORY_RETENTION and MEMORY_RETENTION.bounded
    for i in range(MEMORY_RETENTION.max_sessions + 50):
        store.save(state(f"s{i}"))
    assert store.count() == MEMORY_RETENTION.max_sessions
    assert store.load("s0") is None and store.load(f"s{MEMORY_RETENTION.max_sessions + 49}") is not None
    with pytest.raises(ValueError, match="needs a bound"):
        InMemoryStore(Retention())


def test_memory_store_evicts_least_recently_used():
    store = InMemoryStore(Retention(max_sessions=3))
    for sid in "abc":
        store.save(state(sid))
    assert store.load("a") is not None  # a is now the most recently used
    store.save(state("d"))
    assert store.session_ids() == ["a", "c", "d"]


def test_memory_store_drops_idle_sessions():
    clock = Clock()
    store = InMemoryStore(Retention(idle_seconds=60), clock=clock)
    store.save(state("old"))
    clock.now += 30
    store.save(state("new"))
    clock.now += 31  # old: idle 61 s; new: 31 s
    assert store.session_ids() == ["new"]
    assert store.load("old") is None
    clock.now += 20  # new: idle 51 s
    assert store.load("new") is not None  # a load counts as use
    clock.now += 59
    assert store.session_ids() == ["new"]
    clock.now += 2
    assert store.session_ids() == []


def test_retention_validates():
    for bad in ({"max_sessions": 0}, {"idle_seconds": 0.0}, {"idle_seconds": float("inf")},
                {"idle_seconds": float("nan")}):
        with pytest.raises(ValueError, match="Retention"):
            Retention(**bad)


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_directory_store_keeps_everything_without_retention(tmp_path):
    store = DirectoryStore(tmp_path)
    for i in range(5):
        store.save(state(f"s{i}"))
        _age(tmp_path / f"s{i}.rxs", 10_000)
    assert DirectoryStore(tmp_path).session_ids() == [f"s{i}" for i in range(5)]


def test_directory_store_applies_an_explicit_retention(tmp_path):
    store = DirectoryStore(tmp_path)
    for i in range(6):
        store.save(state(f"s{i}"))
        _age(tmp_path / f"s{i}.rxs", 1000 - i * 100)  # s0 is the oldest
    _age(tmp_path / "s5.rxs", 10)
    kept = DirectoryStore(tmp_path, retention=Retention(max_sessions=4, idle_seconds=550))
    # idle > 550 s: s0 (1000), s1 (900), s2 (800), s3 (700), s4 (600); then at most 4 of what is left
    assert kept.session_ids() == ["s5"]
    bounded = DirectoryStore(tmp_path / "b", retention=Retention(max_sessions=2), sweep_seconds=0.0)
    for i in range(4):
        bounded.save(state(f"t{i}"))
        _age(tmp_path / "b" / f"t{i}.rxs", 100 - i)
    bounded.save(state("t4"))  # the sweep on save keeps the two most recent
    assert bounded.session_ids() == ["t3", "t4"]


def test_open_store_passes_retention(tmp_path):
    store = open_store(str(tmp_path), Retention(max_sessions=7))
    assert isinstance(store, DirectoryStore) and store.retention.max_sessions == 7
    assert open_store("memory://", Retention(max_sessions=3)).retention.max_sessions == 3
    assert open_store(None).retention == MEMORY_RETENTION


def test_redis_store_expires_keys_under_retention(redis_url):
    from rxnn_runtime.stores.redis_store import RedisStore

    store = RedisStore(redis_url, prefix="ttl-test:", retention=Retention(idle_seconds=120))
    store.save(state("e"))
    assert 0 < store._client.ttl("ttl-test:e") <= 120
    plain = RedisStore(redis_url, prefix="ttl-test-plain:")
    plain.save(state("p"))
    assert plain._client.ttl("ttl-test-plain:p") == -1  # no expiry without a policy
    with pytest.raises(ValueError, match="idle_seconds"):
        RedisStore(redis_url, retention=Retention(max_sessions=10))
    for s in (store, plain):
        s.close()


def test_paused_redis_fails_fast_and_reports_degraded(disposable_redis):
    """SIGSTOP the server: one call waits out the short timeout, the next ones fail at once, health says
    degraded; after SIGCONT the health probe brings the store back."""
    from rxnn_runtime.stores.redis_store import RedisStore, StoreConnectionError

    url, _stop = disposable_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    pid = int(subprocess.run(["redis-cli", "-p", str(port), "info", "server"], capture_output=True, text=True,
                             check=True).stdout.split("process_id:")[1].split()[0])
    store = RedisStore(url, socket_timeout=0.5, connect_timeout=0.5, retry_after=30.0)
    store.save(state("r", 1.0))
    assert store.health()["status"] == "ok" and store.health()["latency_ms"] >= 0
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(StoreConnectionError):
            store.save(state("r", 2.0))
        assert time.monotonic() - start < 2.0  # the socket timeout, not forever
        start = time.monotonic()
        for _ in range(20):
            with pytest.raises(StoreConnectionError, match="degraded"):
                store.load("r")
        assert time.monotonic() - start < 0.5  # fail fast while degraded
        health = store.health()
        assert health["status"] == "degraded" and "Timeout" in health["error"]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert store.health()["status"] == "ok"  # the probe ends the degraded state
    # Redis runs the timed-out SET once it resumes (it was already in its socket buffer): the caller was told
    # it failed, the record may hold either value, never a mix. (The runtime keeps the turn number it sent.)
    assert store.load("r").stm.unique().tolist() in ([1.0], [2.0])
    store.close()
