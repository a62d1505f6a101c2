"""A server killed with SIGKILL between turns loses nothing that was committed, for the directory and Redis stores."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from runtime_helpers import tiny_model

from rxnn_runtime.messages import GenerationOptions
from rxnn_runtime.reactive_model import ReactiveModel
from rxnn_runtime.stores import open_store
from rxt.chat import ReactiveChat
from rxt.model import RxT
from rxt.sampling import SamplingConfig
from rxt.tokenizer import RxTokenizer

SERVER = textwrap.dedent(
    """
    import sys, time
    from rxnn_runtime.reactive_model import ReactiveModel
    from rxnn_runtime.stores import open_store
    from rxt.model import RxT
    from rxt.tokenizer import RxTokenizer
    model = RxT.from_pretrained(sys.argv[1])
    reactive = ReactiveModel(model, RxTokenizer.default(), store=open_store(sys.argv[2]))
    reactive.connect()
    answer = reactive.session("alice").ask_sync("my name is Ada", {"max_new_tokens": 6})
    assert reactive.wait_idle()
    print("COMMITTED", repr(answer), flush=True)
    time.sleep(600)  # killed by the test
    """
)


@pytest.fixture(params=["directory", "redis"])
def store_url(request, tmp_path):
    if request.param == "directory":
        return str(tmp_path / "sessions")
    return request.getfixturevalue("redis_url")


def test_sigkill_between_turns_then_restart_continues_identically(tmp_path, store_url):
    model, tokenizer = tiny_model(seed=3)
    model.save_pretrained(tmp_path / "model")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tmp_path / "model"), store_url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # blocks until the first turn is committed (or the child dies)
        assert line.startswith("COMMITTED"), proc.stderr.read() if proc.poll() is not None else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # Reference: the same two turns in one uninterrupted in-process conversation.
    reference = ReactiveChat(RxT.from_pretrained(tmp_path / "model"), tokenizer, SamplingConfig(max_new_tokens=6))
    first = reference.ask("my name is Ada")
    assert line.strip() == f"COMMITTED {first!r}"
    stm_after_first = reference.stm[:, 0].clone()
    second = reference.ask("what is my name?")
    # The restarted server reads the committed session from the store and carries on.
    store = open_store(store_url)
    state = store.load("alice")
    assert state.turns == 1 and state.memory_version == 1
    torch.testing.assert_close(state.stm, stm_after_first, atol=1e-6, rtol=0)
    restarted = ReactiveModel(RxT.from_pretrained(tmp_path / "model"), RxTokenizer.default(), store=store)
    restarted.connect()
    try:
        assert restarted.session("alice").ask_sync("what is my name?", GenerationOptions(max_new_tokens=6)) == second
        assert restarted.wait_idle()
        state = store.load("alice")
        assert state.turns == 2
        torch.testing.assert_close(state.stm, reference.stm[:, 0], atol=1e-6, rtol=0)
    finally:
        restarted.dispose()
