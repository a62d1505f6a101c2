"""A tiny real model shared by the server tests of one module."""

from __future__ import annotations

import pytest

from rxnn_runtime.reactive_model import ReactiveModel
from rxt.model import RxT, RxTConfig
from rxt.tokenizer import RxTokenizer


@pytest.fixture(scope="module")
def reactive():
    tok = RxTokenizer.default()
    rm = ReactiveModel(RxT(RxTConfig.preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128)), tok)
    rm.connect()
    yield rm
    rm.wait_idle(10)
    rm.dispose()
