"""Session stores: in-memory, directory (atomic files) and Redis (a real redis-server, see conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from rxnn_runtime.stores import InMemoryStore, SessionState, SessionStore, open_store
from rxnn_runtime.stores import directory as directory_mod
from rxnn_runtime.stores.directory import CorruptSessionRecord, DirectoryStore

STORE_KINDS = ["memory", "directory", "redis"]


def make_state(session_id: str = "s-1", *, fill: float | None = None, dtype=torch.float32, turns: int = 3):
    gen = torch.Generator().manual_seed(hash(session_id) % 2**31)
    stm = torch.randn(2, 4, 8, generator=gen).to(dtype) if fill is None else torch.full((2, 4, 8), fill)
    return SessionState(
        session_id=session_id,
        stm=stm,
        turns=turns,
        memory_version=turns * 2,
        metadata={"model": "tiny", "user": {"name": "ada", "tags": ["a", "b"]}, "score": 0.5},
        updated_at=1_700_000_000.25,
    )


def bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def assert_same_state(got: SessionState | None, want: SessionState) -> None:
    assert got is not None
    assert got.session_id == want.session_id
    assert got.stm.dtype == want.stm.dtype and got.stm.shape == want.stm.shape
    assert bits(got.stm) == bits(want.stm)  # bitwise, NaN payloads and -0.0 included
    assert got.turns == want.turns
    assert got.memory_version == want.memory_version
    assert got.metadata == want.metadata
    assert got.updated_at == want.updated_at


@pytest.fixture
def redis_store_factory(request):
    """RedisStore instances on the session's redis-server, under a prefix unique to this test."""
    from rxnn_runtime.stores.redis_store import RedisStore

    url = request.getfixturevalue("redis_url")
    prefix = f"test:{uuid.uuid4().hex}:"
    made: list[RedisStore] = []

    def make() -> RedisStore:
        made.append(RedisStore(url, prefix=prefix))
        return made[-1]

    yield make
    if made:
        for sid in made[0].session_ids():
            made[0].delete(sid)
    for s in made:
        s.close()


@pytest.fixture(params=STORE_KINDS)
def store(request, tmp_path) -> SessionStore:
    if request.param == "memory":
        return InMemoryStore()
    if request.param == "directory":
        return DirectoryStore(tmp_path / "sessions")
    return request.getfixturevalue("redis_store_factory")()


# ---------------------------------------------------------------------------------------------- all stores


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip(store, dtype):
    state = make_state("user-42:chat@a.b_c", dtype=dtype)
    state.stm.view(-1)[0] = float("nan")
    state.stm.view(-1)[1] = -0.0
    store.save(state)
    assert_same_state(store.load(state.session_id), state)


def test_load_returns_a_copy(store):
    state = make_state("copy")
    store.save(state)
    loaded = store.load("copy")
    loaded.stm.zero_()
    state.stm.zero_()
    assert bits(store.load("copy").stm) == bits(make_state("copy").stm)


def test_unknown_session_is_none(store):
    assert store.load("nobody") is None


def test_delete(store):
    store.save(make_state("a"))
    store.save(make_state("b"))
    store.delete("a")
    assert store.load("a") is None
    assert store.load("b") is not None
    store.delete("a")  # deleting a missing session is not an error
    store.delete("never-existed")
    assert store.session_ids() == ["b"]


def test_session_ids(store):
    assert store.session_ids() == []
    for sid in ["b", "a", "c:1", "x@y.z", "a"]:
        store.save(make_state(sid))
    assert store.session_ids() == ["a", "b", "c:1", "x@y.z"]


def test_overwrite_replaces(store):
    store.save(make_state("s", turns=1))
    newer = make_state("s", fill=7.0, turns=2)
    store.save(newer)
    assert_same_state(store.load("s"), newer)
    assert store.session_ids() == ["s"]


def test_concurrent_readers_see_whole_records(store):
    """A reader racing a writer sees the old record or the new one, never a mix (stm fill == turns)."""
    store.save(make_state("race", fill=0.0, turns=0))
    stop = threading.Event()

    def reader() -> list[tuple[int, set[float]]]:
        seen = []
        while not stop.is_set():
            got = store.load("race")
            seen.append((got.turns, set(got.stm.flatten().tolist())))
        return seen

    with ThreadPoolExecutor(2) as pool:
        readers = [pool.submit(reader) for _ in range(2)]
        try:
            for k in range(1, 60):
                store.save(make_state("race", fill=float(k), turns=k))
        finally:
            stop.set()
        seen = [item for r in readers for item in r.result(timeout=10)]  # re-raises a reader's error
    assert seen
    for turns, values in seen:
        assert values == {float(turns)}
    assert store.load("race").turns == 59


# ---------------------------------------------------------------------------------------------- directory


def test_directory_layout(tmp_path):
    store = DirectoryStore(tmp_path / "deep" / "sessions")
    store.save(make_state("abc"))
    assert sorted(os.listdir(tmp_path / "deep" / "sessions")) == ["abc.rxs"]
    assert (tmp_path / "deep" / "sessions" / "abc.rxs").read_bytes() == make_state("abc").to_bytes()


def test_directory_survives_a_new_store_instance(tmp_path):
    """A restart: a fresh DirectoryStore on the same directory reads what the old one wrote."""
    DirectoryStore(tmp_path).save(make_state("persist", turns=9))
    assert_same_state(DirectoryStore(tmp_path).load("persist"), make_state("persist", turns=9))


def _fail_to_bytes(monkeypatch):
    def boom(self):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(SessionState, "to_bytes", boom)


def _fail_fsync(monkeypatch):
    real_fsync = os.fsync

    def boom(fd):
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).endswith(".tmp"):
            raise OSError(28, "No space left on device (simulated)")
        return real_fsync(fd)

    monkeypatch.setattr(directory_mod.os, "fsync", boom)


def _fail_write_half(monkeypatch):
    """The disk fills up half-way through writing the temp file."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self._f = f

        def write(self, data):
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(28, "No space left on device (simulated)")

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(directory_mod.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


def _fail_replace(monkeypatch):
    def boom(src, dst):
        raise OSError(5, "I/O error (simulated)")

    monkeypatch.setattr(directory_mod.os, "replace", boom)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fsync hook reads /proc/self/fd")
@pytest.mark.parametrize(
    "fail", [_fail_to_bytes, _fail_write_half, _fail_fsync, _fail_replace], ids=lambda f: f.__name__[6:]
)
def test_directory_failed_overwrite_keeps_old_record_and_no_temp(tmp_path, monkeypatch, fail):
    store = DirectoryStore(tmp_path)
    old = make_state("s", turns=1)
    store.save(old)
    before = (tmp_path / "s.rxs").read_bytes()

    fail(monkeypatch)
    with pytest.raises((RuntimeError, OSError), match="simulated|serialisation"):
        store.save(make_state("s", fill=5.0, turns=2))
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["s.rxs"]  # no temp files left behind
    assert (tmp_path / "s.rxs").read_bytes() == before
    assert_same_state(store.load("s"), old)


def test_directory_killed_mid_write_keeps_old_record(tmp_path):
    """A process killed between writing the temp file and renaming it: the old record stays readable, the stray
    temp file is not mistaken for a session, and a later store removes it once it is stale."""
    store = DirectoryStore(tmp_path)
    old = make_state("s", turns=1)
    store.save(old)
    script = f"""
import os, torch
from rxnn_runtime.stores import directory as d
from rxnn_runtime.stores.base import SessionState
def die(src, dst):
    os._exit(17)  # killed after the temp file was written and fsynced, before the rename
d.os.replace = die
d.DirectoryStore({str(tmp_path)!r}).save(SessionState("s", torch.full((2, 4, 8), 5.0), turns=2))
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()

    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".s.")
    assert store.session_ids() == ["s"]
    assert_same_state(store.load("s"), old)

    # The process that wrote it is gone: the next store removes it at once, not an hour later.
    DirectoryStore(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["s.rxs"]
    assert_same_state(store.load("s"), old)


def test_directory_keeps_a_live_writers_temp_until_stale(tmp_path):
    """A temp file of a process that is still running may be a save in progress: kept until it is stale."""
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        temp = tmp_path / f".s.{writer.pid}~abc123.tmp"
        temp.write_bytes(b"half a record")
        DirectoryStore(tmp_path)
        assert temp.exists()
        an_hour_ago = time.time() - 7200
        os.utime(temp, (an_hour_ago, an_hour_ago))
        DirectoryStore(tmp_path)
        assert not temp.exists()
    finally:
        writer.kill()
        writer.wait()


def test_directory_save_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if sys.platform.startswith("linux") else "?")
        return real_fsync(fd)

    monkeypatch.setattr(directory_mod.os, "fsync", spy)
    DirectoryStore(tmp_path).save(make_state("s"))
    assert len(synced) == 2
    if sys.platform.startswith("linux"):
        assert synced[0].endswith(".tmp") and Path(synced[1]) == tmp_path


@pytest.mark.parametrize("content", [b"", b"not msgpack at all \xff\xfe", b"\x81\xa6format\x02"])
def test_directory_corrupt_record_names_the_file(tmp_path, content):
    store = DirectoryStore(tmp_path)
    (tmp_path / "bad.rxs").write_bytes(content)
    with pytest.raises(CorruptSessionRecord) as info:
        store.load("bad")
    assert str(tmp_path / "bad.rxs") in str(info.value)
    assert info.value.where == str(tmp_path / "bad.rxs")
    assert (tmp_path / "bad.rxs").exists()  # not silently dropped
    assert store.session_ids() == ["bad"]


def test_directory_truncated_record_names_the_file(tmp_path):
    store = DirectoryStore(tmp_path)
    store.save(make_state("t"))
    data = (tmp_path / "t.rxs").read_bytes()
    (tmp_path / "t.rxs").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSessionRecord, match="t.rxs"):
        store.load("t")


def test_directory_record_for_another_session_is_an_error(tmp_path):
    store = DirectoryStore(tmp_path)
    store.save(make_state("alice"))
    os.replace(tmp_path / "alice.rxs", tmp_path / "bob.rxs")
    with pytest.raises(CorruptSessionRecord, match="bob.rxs.*'alice'"):
        store.load("bob")


@pytest.mark.parametrize(
    "bad_id", ["../escape", "..", ".", "a/b", "/etc/passwd", "a\\b", "x..y", "nul\0byte", "", "é" * 120]
)
def test_directory_rejects_path_traversal_ids(tmp_path, bad_id):
    store = DirectoryStore(tmp_path / "sessions")
    for call in (
        lambda: store.load(bad_id),
        lambda: store.save(make_state(bad_id)),
        lambda: store.delete(bad_id),
    ):
        with pytest.raises(ValueError) as info:
            call()
        assert repr(bad_id) in str(info.value)
    assert os.listdir(tmp_path) == ["sessions"]
    assert os.listdir(tmp_path / "sessions") == []


def test_directory_ignores_foreign_files(tmp_path):
    store = DirectoryStore(tmp_path)
    store.save(make_state("real"))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "sub.rxs").mkdir()
    assert store.session_ids() == ["real"]


def test_directory_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="f"):
        DirectoryStore(tmp_path / "f")


# ---------------------------------------------------------------------------------------------- redis


def test_two_redis_replicas_share_sessions(redis_store_factory):
    a, b = redis_store_factory(), redis_store_factory()
    a.save(make_state("shared", turns=1))
    assert_same_state(b.load("shared"), make_state("shared", turns=1))
    b.save(make_state("shared", fill=2.0, turns=2))
    b.save(make_state("only-b"))
    assert_same_state(a.load("shared"), make_state("shared", fill=2.0, turns=2))
    assert a.session_ids() == b.session_ids() == ["only-b", "shared"]
    a.delete("shared")
    assert b.load("shared") is None
    assert b.session_ids() == ["only-b"]


def test_redis_prefixes_isolate_stores(redis_url):
    from rxnn_runtime.stores.redis_store import RedisStore

    tag = uuid.uuid4().hex
    one = RedisStore(redis_url, prefix=f"one[{tag}]*:")  # glob metacharacters in the prefix match literally
    two = RedisStore(redis_url, prefix=f"one[{tag}]*:x")
    other = RedisStore(redis_url, prefix=f"oneX{tag}:")
    try:
        one.save(make_state("a"))
        other.save(make_state("b"))
        assert one.session_ids() == ["a"]
        assert other.session_ids() == ["b"]
        assert two.session_ids() == []
        assert one._client.get(f"one[{tag}]*:a") == make_state("a").to_bytes()
    finally:
        one.delete("a")
        other.delete("b")
        for s in (one, two, other):
            s.close()


def test_redis_default_prefix_and_many_sessions(redis_url):
    from rxnn_runtime.stores.redis_store import RedisStore

    store = RedisStore(redis_url)
    assert store.prefix == "rxnn:session:"
    ids = [f"many-{uuid.uuid4().hex[:8]}-{i}" for i in range(1500)]  # more than one SCAN page
    state = make_state("x")
    pipe = store._client.pipeline()
    for sid in ids:
        state.session_id = sid
        pipe.set("rxnn:session:" + sid, state.to_bytes())
    pipe.execute()
    try:
        assert set(ids) <= set(store.session_ids())
        assert store.load(ids[-1]).session_id == ids[-1]
    finally:
        store._client.delete(*["rxnn:session:" + sid for sid in ids])
        store.close()


def test_redis_corrupt_record_names_the_key(redis_store_factory):
    store = redis_store_factory()
    store._client.set(store.prefix + "bad", b"\x00garbage")
    with pytest.raises(CorruptSessionRecord) as info:
        store.load("bad")
    assert store.prefix + "bad" in str(info.value)
    assert store.session_ids() == ["bad"]  # not silently dropped


def test_redis_unreachable_names_the_url():
    from rxnn_runtime.stores.redis_store import RedisStore, StoreConnectionError

    port = _closed_port()
    url = f"redis://127.0.0.1:{port}/0"
    with pytest.raises(StoreConnectionError) as info:
        RedisStore(url, connect_timeout=1)
    assert url in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_redis_error_hides_the_password():
    from rxnn_runtime.stores.redis_store import StoreConnectionError

    port = _closed_port()
    with pytest.raises(StoreConnectionError) as info:
        open_store(f"redis://user:s3cret@127.0.0.1:{port}/0")
    assert "s3cret" not in str(info.value)
    assert f"redis://user:***@127.0.0.1:{port}/0" in str(info.value)


def test_redis_server_gone_after_start_names_the_url(disposable_redis):
    """A replica whose Redis goes away mid-run gets a clear error naming the URL on the next call, not a hang."""
    from rxnn_runtime.stores.redis_store import RedisStore, StoreConnectionError

    url, stop = disposable_redis
    store = RedisStore(url, connect_timeout=1, socket_timeout=2)
    store.save(make_state("s"))
    stop()
    for call in (lambda: store.load("s"), lambda: store.save(make_state("s")), store.session_ids):
        started = time.monotonic()
        with pytest.raises(StoreConnectionError) as info:
            call()
        assert url in str(info.value)
        assert time.monotonic() - started < 30
    store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when we return: nothing listens there


# ---------------------------------------------------------------------------------------------- open_store


@pytest.mark.parametrize("url", [None, "", "memory://", "MEMORY://", "  "])
def test_open_store_memory(url):
    assert isinstance(open_store(url), InMemoryStore)


def test_open_store_plain_path_creates_directory(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    store = open_store(str(target))
    assert isinstance(store, DirectoryStore) and target.is_dir()
    assert open_store(target).path == target  # a pathlib.Path works too
    monkeypatch.chdir(tmp_path)
    rel = open_store("rel/sessions")
    assert isinstance(rel, DirectoryStore) and (tmp_path / "rel" / "sessions").is_dir()
    rel.save(make_state("r"))
    assert (tmp_path / "rel" / "sessions" / "r.rxs").exists()


def test_open_store_file_url(tmp_path):
    target = tmp_path / "with space" / "sessions"
    store = open_store("file://" + str(target).replace(" ", "%20"))
    assert isinstance(store, DirectoryStore) and store.path == target and target.is_dir()
    assert open_store(target.as_uri()).path == target
    assert open_store("file://localhost" + str(target)).path == target


@pytest.mark.parametrize("url", ["file://relative/path", "file://otherhost/abs/path", "file:relative"])
def test_open_store_bad_file_urls(url):
    with pytest.raises(ValueError, match="file:///absolute/path") as info:
        open_store(url)
    assert url in str(info.value)


@pytest.mark.parametrize(
    "url", ["ftp://x", "http://localhost:6379", "s3://bucket/key", "memcached://h", "data:1"]
)
def test_open_store_unknown_scheme(url):
    with pytest.raises(ValueError) as info:
        open_store(url)
    message = str(info.value)
    assert url in message
    for scheme in ("memory://", "redis://", "rediss://", "file://"):
        assert scheme in message


def test_open_store_redis(redis_url):
    from rxnn_runtime.stores.redis_store import RedisStore

    store = open_store(redis_url)
    try:
        assert isinstance(store, RedisStore)
        sid = f"open-{uuid.uuid4().hex}"
        store.save(make_state(sid))
        assert_same_state(store.load(sid), make_state(sid))
        store.delete(sid)
    finally:
        store.close()


def test_open_store_rediss_scheme_goes_to_redis(monkeypatch):
    from rxnn_runtime.stores import redis_store

    opened = []
    monkeypatch.setattr(redis_store.RedisStore, "__init__", lambda self, url, **kw: opened.append(url))
    open_store("rediss://example.invalid:6380/1")
    open_store("redis://example.invalid/0")
    assert opened == ["rediss://example.invalid:6380/1", "redis://example.invalid/0"]


def test_saved_metadata_is_a_copy_with_the_record_types(store):
    state = make_state("meta")
    state.metadata = {"tags": ("a", "b"), "n": 1}
    store.save(state)
    state.metadata["n"] = 2
    assert store.load("meta").metadata == {"tags": ["a", "b"], "n": 1}  # msgpack's types, in every store
