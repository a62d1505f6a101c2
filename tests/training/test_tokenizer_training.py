import json

import pytest

from rxt.special_tokens import ALL_SPECIAL_TOKENS
from rxt.tokenizer import RxTokenizer
from training.tokenizer_training import TOKENIZER_KINDS, TokenizerTrainingConfig, train_tokenizer

CORPUS = [
    "hello there, how are you doing today?",
    "I am doing well, thank you. How about you?",
    "what did you have for breakfast this morning?",
    "I had eggs and toast with some coffee.",
    "do you like movies? I watched a great one yesterday.",
    "Ça va très bien, merci!",
] * 4

EXPECTED_DECODER = {"byte_bpe": "ByteLevel", "bpe": "Metaspace", "unigram": "Metaspace", "wordpiece": "WordPiece"}


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_each_kind_trains_with_special_tokens_first(kind):
    tok = train_tokenizer(CORPUS, TokenizerTrainingConfig(kind=kind, vocab_size=300, min_frequency=1))
    assert isinstance(tok, RxTokenizer)
    assert 9 < tok.vocab_size <= 300
    for expected_id, token in enumerate(ALL_SPECIAL_TOKENS):
        assert tok.token_to_id(token) == expected_id
        assert tok.encode(token, allow_special=True) == [expected_id]
    text = "hello how are you [Q] today"
    ids = tok.encode(text.replace("[Q]", ""), allow_special=True)
    assert tok.query_id not in ids
    ids = tok.encode(text, allow_special=True)
    assert ids.count(tok.query_id) == 1
    data = json.loads(tok.to_str())
    assert data["decoder"]["type"] == EXPECTED_DECODER[kind]
    assert data["padding"]["pad_token"] == "[PAD]" and data["padding"]["pad_id"] == 0
    assert tok.decode(tok.encode("hello how are you")) == "hello how are you"


def test_byte_bpe_round_trips_exactly_even_unseen_text():
    tok = train_tokenizer(CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))
    text = "  unseen: 한국어 😀\n\tnew\r\nlines  "
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_byte_bpe_learns_merges():
    tok = train_tokenizer(CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))
    assert len(tok.encode("hello there")) < len(b"hello there")


def test_training_is_deterministic():
    config = TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1)
    assert train_tokenizer(CORPUS, config).to_str() == train_tokenizer(CORPUS, config).to_str()


def test_default_config_is_byte_bpe_8192():
    config = TokenizerTrainingConfig()
    assert (config.kind, config.vocab_size, config.min_frequency) == ("byte_bpe", 8192, 2)


def test_config_validation():
    with pytest.raises(ValueError, match="kind"):
        TokenizerTrainingConfig(kind="sentencepiece")
    with pytest.raises(ValueError, match=r"vocab_size must be at least 265.*100"):
        TokenizerTrainingConfig(kind="byte_bpe", vocab_size=100)
    with pytest.raises(ValueError, match="min_frequency"):
        TokenizerTrainingConfig(min_frequency=0)


def test_non_string_text_is_rejected():
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_tokenizer(["ok", 3], TokenizerTrainingConfig(vocab_size=300))  # type: ignore[list-item]
