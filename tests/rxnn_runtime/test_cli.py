"""`rxnn` as a user runs it: subprocesses, exit codes, stdout/stderr."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

from rxnn_runtime.stores import SessionState
from rxt.config import RxTConfig
from rxt.model import RxT
from rxt.tokenizer import RxTokenizer

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def rxnn(*args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rxnn_runtime.cli", *args], input=stdin, capture_output=True, text=True, check=False,
        env=ENV, timeout=timeout,
    )


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    torch.manual_seed(0)
    vocab = RxTokenizer.default().vocab_size
    path = tmp_path_factory.mktemp("model") / "tiny"
    RxT(RxTConfig.preset("tiny", vocab_size=vocab, max_seq_len=128)).save_pretrained(path)
    return path


def test_help_exits_0_and_lists_commands():
    result = rxnn("--help")
    assert result.returncode == 0
    for command in ("demo", "serve", "chat"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["serve", "chat", "demo"])
def test_each_command_has_help(command):
    result = rxnn(command, "--help")
    assert result.returncode == 0
    assert "--help" in result.stdout


def test_unknown_command_exits_2():
    result = rxnn("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in result.stderr


def test_bad_option_value_exits_2():
    assert rxnn("chat", "--max-new-tokens", "0").returncode == 2
    assert rxnn("serve", "--port", "notaport").returncode == 2


def test_chat_streams_and_handles_commands(tiny_model_dir, tmp_path):
    saves = tmp_path / "saves"
    result = rxnn(
        "chat", "--model", str(tiny_model_dir), "--session", "cli-test", "--max-new-tokens", "6",
        stdin=f"hello\n/save {saves}\n/reset\nagain\n/quit\nnot reached\n",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    answers = [line for line in lines if line.startswith("rxt> ")]
    assert len(answers) == 2  # "not reached" came after /quit
    assert all(len(line) > len("rxt> ") for line in answers)  # streamed text (untrained: noise, but text)
    assert any("session reset" in line for line in lines)
    saved = SessionState.from_bytes((saves / "cli-test.rxs").read_bytes())
    assert saved.session_id == "cli-test" and saved.turns == 1
    assert not list(saves.glob("*.tmp"))


def test_chat_memory_persists_in_a_directory_store(tiny_model_dir, tmp_path):
    store = tmp_path / "sessions"
    args = ("chat", "--model", str(tiny_model_dir), "--session", "s1", "--max-new-tokens", "3",
            "--store", str(store))
    first = rxnn(*args, stdin="one\n")
    if first.returncode == 1 and "store" in first.stderr:
        pytest.skip(f"directory store not available yet: {first.stderr.strip()}")
    assert first.returncode == 0, first.stderr
    second = rxnn(*args, stdin="two\n")
    assert second.returncode == 0, second.stderr
    assert "(1 turns in memory)" in second.stdout


def test_missing_model_path_exits_1_naming_the_path(tmp_path):
    missing = tmp_path / "no-such-model"
    result = rxnn("chat", "--model", str(missing), stdin="hello\n")
    assert result.returncode == 1
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_slash_command_is_reported_and_chat_goes_on(tiny_model_dir):
    result = rxnn("chat", "--model", str(tiny_model_dir), "--max-new-tokens", "2", stdin="/frob\nhi\n")
    assert result.returncode == 0
    assert "unknown command /frob" in result.stderr
    assert sum(line.startswith("rxt> ") for line in result.stdout.splitlines()) == 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(*args: str, env: dict = ENV):
    """`rxnn serve ARGS` as a child process; on leaving, SIGTERM must stop it with exit 0 (else it is killed)."""
    proc = subprocess.Popen([sys.executable, "-m", "rxnn_runtime.cli", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_answers_healthz_and_stops_on_sigterm(tiny_model_dir):
    pytest.importorskip("rxnn_runtime.server.app", reason="rxnn_runtime.server.app is not in place yet")
    port = _free_port()
    with _serving("--model", str(tiny_model_dir), "--port", str(port)) as proc:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                    status = response.status
                    break
            except OSError:
                time.sleep(0.2)
        assert status == 200, proc.stderr.read() if proc.poll() is not None else "no answer on /healthz"


def test_serve_flags_key_and_retention(tiny_model_dir, tmp_path):
    """--api-key and --session-limit reach the server; a bad retention value is a one-line error."""
    bad = rxnn("serve", "--model", str(tiny_model_dir), "--session-limit", "0")
    assert bad.returncode == 1 and "Retention.max_sessions=0" in bad.stderr
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rxnn_runtime.cli", "serve", "--model", str(tiny_model_dir), "--port", str(port),
         "--api-key", "k1", "--store", str(tmp_path / "s"), "--session-limit", "3"],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}'

    def post(headers):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()
                break
            except OSError:
                time.sleep(0.2)
        assert post({}) == 401
        assert post({"Authorization": "Bearer k1"}) == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def test_version_prints_the_package_version():
    import tomllib
    from pathlib import Path

    import rxnn_runtime

    result = rxnn("--version")
    assert result.returncode == 0, result.stderr
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert result.stdout.strip() == f"rxnn {pyproject['project']['version']}"
    assert rxnn_runtime.__version__ == pyproject["project"]["version"]  # the fallback cannot drift


def test_version_falls_back_to_the_package_version(monkeypatch):
    import importlib.metadata

    import rxnn_runtime
    from rxnn_runtime import cli

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    monkeypatch.setattr(rxnn_runtime, "__version__", "9.8.7")
    assert cli.package_version() == "9.8.7"


def test_serve_port_0_prints_the_real_address_flushed(tiny_model_dir):
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered: the print flushes
    with _serving("--model", str(tiny_model_dir), "--port", "0", "--device", "cpu", env=env) as proc:
        line = proc.stdout.readline()  # blocks until the server is bound (or the child dies)
        prefix = "rxnn serve: listening on http://127.0.0.1:"
        assert line.startswith(prefix), proc.stderr.read() if proc.poll() is not None else line
        port = int(line.strip()[len(prefix):])
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as response:
            assert response.status == 200


def test_serve_with_the_engine_process_answers_a_turn_and_stops_on_sigterm(tiny_model_dir):
    """``--engine-process``: the lane in a child process; /healthz and a websocket turn as without it, and SIGTERM
    stops both processes with exit 0 (`_serving` checks it)."""
    import asyncio

    import aiohttp

    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    with _serving("--model", str(tiny_model_dir), "--port", "0", "--device", "cpu", "--engine-process",
                  env=env) as proc:
        line = proc.stdout.readline()
        prefix = "rxnn serve: listening on http://127.0.0.1:"
        assert line.startswith(prefix), proc.stderr.read() if proc.poll() is not None else line
        url = line.strip()[len(prefix) - len("http://127.0.0.1:"):]

        async def one_turn() -> list[str]:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{url}/healthz") as response:
                    assert response.status == 200 and (await response.json())["lane"]["alive"] is True
                async with http.ws_connect(f"{url}/ws") as ws:
                    await ws.send_json({"type": "query", "session": "e", "id": "q", "text": "hi", "max_new_tokens": 3})
                    kinds = []
                    while not kinds or kinds[-1] not in ("memory_updated", "error"):
                        kinds.append((await ws.receive_json(timeout=60))["type"])
                    return kinds

        kinds = asyncio.run(one_turn())
        assert kinds[0] == "query_accepted" and "answer" in kinds and kinds[-1] == "memory_updated", kinds


@pytest.mark.parametrize("command", ["serve", "chat"])
def test_device_that_is_absent_or_unknown_exits_2(command):
    absent = "cuda:999" if torch.cuda.is_available() else "cuda"
    result = rxnn(command, "--device", absent)
    assert result.returncode == 2
    assert f"--device={absent}" in result.stderr and "CUDA" in result.stderr
    result = rxnn(command, "--device", "tpu")
    assert result.returncode == 2 and "must be cpu, cuda or cuda:N" in result.stderr


def test_default_device_is_cuda_when_present(monkeypatch):
    from rxnn_runtime import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.default_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.default_device() == "cuda"


def test_chat_reads_lines_with_input_and_ends_cleanly_at_eof(tiny_model_dir, monkeypatch, capsys):
    """Lines come from input() (readline editing on a terminal); EOFError ends the chat with exit 0."""
    from rxnn_runtime import cli

    lines = iter(["hello", "/reset"])
    prompts = []

    def fake_input(prompt=""):
        prompts.append(prompt)
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code = cli.main(["chat", "--model", str(tiny_model_dir), "--max-new-tokens", "2", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert len(prompts) == 3  # two lines, then the EOF
    assert sum(line.startswith("rxt> ") for line in out.splitlines()) == 1
    assert "session reset" in out


def test_chat_input_without_final_newline_is_answered(tiny_model_dir):
    result = rxnn("chat", "--model", str(tiny_model_dir), "--max-new-tokens", "2", "--device", "cpu", stdin="hi")
    assert result.returncode == 0, result.stderr
    assert sum(line.startswith("rxt> ") for line in result.stdout.splitlines()) == 1
