"""`rxnn chat --model`: a Hub repo id from the local Hub cache loads with its own tokenizer; a mistyped local path
says it is not a directory and not a Hub id; a model without a tokenizer of its own is never run silently with
another."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from hub_fixtures import add_snapshot

from rxt.config import RxTConfig
from rxt.model import RxT
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

CORPUS = ["hello there, how are you?", "I am fine, thank you very much.", "what is your favourite food?"] * 5


def rxnn(*args: str, cwd, env_extra=None, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rxnn_runtime.cli", *args], input=stdin, capture_output=True,
                          text=True, check=False, env=env, cwd=cwd, timeout=180)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    tokenizer = train_tokenizer(CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_seq_len=128))
    root = tmp_path_factory.mktemp("models")
    model.save_pretrained(root / "with_tok", tokenizer=tokenizer)
    model.save_pretrained(root / "without_tok")
    return root


def test_hub_id_from_the_cache_chats_with_its_own_tokenizer(small_model, tmp_path):
    cache = tmp_path / "hub"
    add_snapshot(cache, "org/tiny-rxt", small_model / "with_tok")
    # 300 ids: with the packaged tokenizer (8192) this model could not run at all
    result = rxnn("chat", "--model", "org/tiny-rxt", "--max-new-tokens", "3", cwd=tmp_path,
                  env_extra={"HF_HUB_CACHE": str(cache)}, stdin="hello there\n/quit\n")
    assert result.returncode == 0, result.stderr
    assert "rxt> " in result.stdout and "NOTE" not in result.stderr


def test_mistyped_local_path_says_not_a_directory_and_not_a_hub_id(tmp_path):
    (tmp_path / "runs").mkdir()
    result = rxnn("chat", "--model", "runs/nosuch", cwd=tmp_path, stdin="hi\n")
    assert result.returncode == 1
    assert "'runs/nosuch' is not a directory (no such path) and not a Hub repo id" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_model_without_its_tokenizer_is_an_error_unless_the_vocab_matches(small_model, tmp_path):
    result = rxnn("chat", "--model", str(small_model / "without_tok"), cwd=tmp_path, stdin="hi\n")
    assert result.returncode == 1
    assert "has no tokenizer.json and its vocab_size=300 is not the packaged tokenizer's 8192" in result.stderr
