"""Fixtures shared by the runtime tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

_INSTALL_HINT = "run `bash scripts/ensure-system-deps.sh` as root (or apt-get install redis-server)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _start_redis(binary: str, workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on a free port; retry with another port if the one picked was taken meanwhile."""
    log_path = os.path.join(workdir, "redis.log")
    for _ in range(3):
        port = _free_port()
        # The server logs to a file, not a pipe: nobody reads a pipe while tests run, and a full one blocks it.
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    workdir,
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and proc.poll() is None:
            if _answers_ping(port):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
    with open(log_path, "rb") as log:
        tail = log.read()[-2000:].decode(errors="replace")
    raise RuntimeError(f"redis-server did not start; its log ends with:\n{tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _redis_binary() -> str:
    binary = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.skip(f"redis-server is not installed: {_INSTALL_HINT}")
    return binary


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server for this test session (no persistence), as `redis://127.0.0.1:<port>/0`."""
    proc, port = _start_redis(_redis_binary(), str(tmp_path_factory.mktemp("redis")))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        _stop(proc)


@pytest.fixture
def disposable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Callable[[], None]]]:
    """A redis-server of this test's own, as (url, stop): for tests that take the server away mid-run."""
    proc, port = _start_redis(_redis_binary(), str(tmp_path_factory.mktemp("redis-disposable")))
    try:
        yield f"redis://127.0.0.1:{port}/0", lambda: _stop(proc)
    finally:
        _stop(proc)
