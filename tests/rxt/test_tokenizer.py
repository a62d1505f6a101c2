import json
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from rxt.special_tokens import ALL_SPECIAL_TOKENS, SpecialTokens
from rxt.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES, IncrementalDecoder, RxTokenizer
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

UNICODE_TEXTS = [
    "Hello, world!",
    " leading space",
    "   three leading spaces and trailing  ",
    "line one\nline two\n\n\ttabbed\r\nwindows",
    "\n",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧",
    "accents: Ça va? naïve café résumé; decomposed e\u0301",
    "CJK: 東京は晴れです。你好，世界！ 한국어",
    "mixed: ∑ x² ≈ π/2 — “quotes” ‘single’ …",
    "special strings as text: [Q] [A] [EOS] [PAD]",
    "",
]

TINY_CORPUS = [
    "hello there, how are you?",
    "I am fine, thank you very much.",
    "what is your favourite food?",
    "I like pizza and pasta.",
] * 5


@pytest.fixture(scope="module")
def default_tok() -> RxTokenizer:
    return RxTokenizer.default()


@pytest.fixture(scope="module")
def tiny_tok() -> RxTokenizer:
    return train_tokenizer(TINY_CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))


def test_special_tokens_constants():
    assert ALL_SPECIAL_TOKENS == ("[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "[Q]", "[A]", "[T]", "[I]")
    assert SpecialTokens.QUERY == "[Q]"
    assert SpecialTokens.INTERNAL.value == "[I]"


def test_default_asset_special_ids_are_0_to_8_and_single_tokens(default_tok):
    assert default_tok.vocab_size == 8192
    assert default_tok.is_byte_level
    for expected_id, token in enumerate(ALL_SPECIAL_TOKENS):
        assert default_tok.token_to_id(token) == expected_id
        assert default_tok.id_to_token(expected_id) == token
        assert default_tok.encode(token, allow_special=True) == [expected_id]
        assert default_tok.decode([expected_id], skip_special_tokens=False) == token
        assert default_tok.decode([expected_id]) == ""
    ids = [
        default_tok.pad_id, default_tok.unk_id, default_tok.bos_id, default_tok.eos_id, default_tok.mask_id,
        default_tok.query_id, default_tok.answer_id, default_tok.think_id, default_tok.internal_id,
    ]
    assert ids == list(range(9))
    assert default_tok.special_id(SpecialTokens.ANSWER) == default_tok.answer_id
    assert set(range(9)) <= default_tok.special_ids


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_round_trip_default(default_tok, text):
    ids = default_tok.encode(text)
    assert all(i not in default_tok.special_ids for i in ids)
    assert default_tok.decode(ids) == text


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_round_trip_tiny_trained_byte_bpe_handles_unseen_characters(tiny_tok, text):
    assert tiny_tok.decode(tiny_tok.encode(text)) == text


def test_special_strings_in_text_are_plain_text_unless_allowed(default_tok):
    text = "say [EOS] then [A]"
    plain = default_tok.encode(text)
    assert default_tok.eos_id not in plain and default_tok.answer_id not in plain
    parsed = default_tok.encode(text, allow_special=True)
    assert parsed.count(default_tok.eos_id) == 1 and parsed.count(default_tok.answer_id) == 1
    assert default_tok.decode(parsed, skip_special_tokens=False) == text
    assert default_tok.decode(parsed) == "say  then "


def test_encode_batch_matches_encode(default_tok):
    texts = ["short", "a much longer text that would be padded", ""]
    assert default_tok.encode_batch(texts) == [default_tok.encode(t) for t in texts]


def test_decode_skips_specials_and_accepts_tensors(default_tok):
    body = default_tok.encode("hi there")
    ids = [default_tok.bos_id, default_tok.query_id, *body, default_tok.eos_id]
    assert default_tok.decode(ids) == "hi there"
    assert default_tok.decode(ids, skip_special_tokens=False) == "[BOS][Q]hi there[EOS]"
    assert default_tok.decode(torch.tensor(ids)) == "hi there"


@pytest.mark.parametrize("bad", [-1, 8192, 10**6])
def test_decode_out_of_range_names_id_and_vocab_size(default_tok, bad):
    with pytest.raises(ValueError, match=rf"{bad}.*vocab_size 8192"):
        default_tok.decode([5, bad])
    with pytest.raises(ValueError, match=rf"{bad}.*vocab_size 8192"):
        default_tok.incremental_decoder().decode_token(bad)


def test_decode_rejects_non_integer_ids(default_tok):
    with pytest.raises(TypeError):
        default_tok.decode([1.5])


def test_token_to_id_unknown_token(default_tok):
    with pytest.raises(ValueError, match="not-a-token"):
        default_tok.token_to_id("not-a-token")


def test_token_bytes_match_backend_decoder(default_tok):
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        ids = torch.randint(9, default_tok.vocab_size, (12,), generator=gen).tolist()
        joined = b"".join(default_tok.token_bytes(i) for i in ids).decode("utf-8", errors="replace")
        assert joined == default_tok.decode(ids)


def test_incremental_decoder_emits_emoji_only_when_complete(default_tok):
    ids = default_tok.encode("😀")
    assert len(ids) > 1, "precondition: the emoji must span several byte-level tokens"
    dec = IncrementalDecoder(default_tok)
    deltas = [dec.decode_token(i) for i in ids]
    assert deltas[:-1] == [""] * (len(ids) - 1)
    assert deltas[-1] == "😀"
    assert dec.flush() == ""
    assert dec.text == "😀"


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_incremental_decoder_concatenates_to_full_decode(default_tok, text):
    ids = [default_tok.bos_id, *default_tok.encode(text), default_tok.eos_id]
    dec = default_tok.incremental_decoder()
    deltas = [dec.decode_token(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) + dec.flush() == default_tok.decode(ids) == text


def test_incremental_decoder_keeps_specials_when_asked(default_tok):
    ids = [default_tok.query_id, *default_tok.encode("ok"), default_tok.eos_id]
    dec = default_tok.incremental_decoder(skip_special_tokens=False)
    assert dec.decode_tokens(ids) + dec.flush() == "[Q]ok[EOS]"


def test_incremental_decoder_flushes_incomplete_character(default_tok):
    ids = default_tok.encode("東")
    assert len(ids) > 1
    dec = default_tok.incremental_decoder()
    assert dec.decode_tokens(ids[:-1]) == ""
    assert dec.flush() == "\ufffd"
    dec.reset()
    assert dec.decode_tokens(ids) == "東"


def test_incremental_decoder_non_byte_level_matches_full_decode():
    tok = train_tokenizer(TINY_CORPUS, TokenizerTrainingConfig(kind="unigram", vocab_size=60))
    assert not tok.is_byte_level
    ids = tok.encode("hello how are you? I like pasta")
    dec = tok.incremental_decoder()
    out = "".join(dec.decode_token(i) for i in ids) + dec.flush()
    assert out == tok.decode(ids)


def test_save_and_load_round_trip(tmp_path, tiny_tok):
    path = tiny_tok.save_pretrained(tmp_path / "tok")
    assert path == tmp_path / "tok" / TOKENIZER_FILE
    assert sorted(os.listdir(tmp_path / "tok")) == sorted(TOKENIZER_FILES)  # and no temp file left
    for source in (tmp_path / "tok", path, str(path)):
        loaded = RxTokenizer.from_pretrained(source)
        assert loaded.to_str() == tiny_tok.to_str()
        assert loaded.vocab_size == tiny_tok.vocab_size
        text = "hello 😀 there\n"
        assert loaded.encode(text) == tiny_tok.encode(text)
    assert RxTokenizer.from_file(path).pad_id == 0
    padding = json.loads(path.read_text(encoding="utf-8"))["padding"]
    assert padding["pad_token"] == "[PAD]" and padding["pad_id"] == 0


def test_save_is_atomic_on_failure(tmp_path, tiny_tok, default_tok, monkeypatch):
    path = tiny_tok.save_pretrained(tmp_path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        default_tok.save_pretrained(tmp_path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(TOKENIZER_FILES)


def test_from_pretrained_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        RxTokenizer.from_pretrained(tmp_path)


def _trained_backend(special_tokens: list[str]) -> Tokenizer:
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, special_tokens=special_tokens, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TINY_CORPUS, trainer)
    return backend


def test_missing_special_token_is_named():
    specials = [t for t in ALL_SPECIAL_TOKENS if t != "[T]"]
    with pytest.raises(ValueError, match=r"'\[T\]'.*missing"):
        RxTokenizer(_trained_backend(specials))


def test_special_token_not_registered_as_special_is_rejected():
    vocab = {token: i for i, token in enumerate(ALL_SPECIAL_TOKENS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    with pytest.raises(ValueError, match=r"'\[PAD\]'.*not registered"):
        RxTokenizer(backend)


def test_wrapping_does_not_modify_the_given_tokenizer():
    backend = _trained_backend(list(ALL_SPECIAL_TOKENS))
    RxTokenizer(backend)
    assert backend.encode("[Q]", add_special_tokens=False).ids == [backend.token_to_id("[Q]")]


def test_incremental_decoder_flush_owes_exactly_the_unfinished_character():
    """The runtime's AnswerDone.tail relies on this: deltas + flush() == decode() even when ids stop mid-character."""
    tok = RxTokenizer.default()
    owed = 0
    for text in ("hi 🐝", "日本語", "ça va 👍🏽"):
        ids = tok.encode(text)
        for cut in range(1, len(ids) + 1):
            dec = tok.incremental_decoder()
            streamed = dec.decode_tokens(ids[:cut])
            tail = dec.flush()
            owed += bool(tail)
            assert streamed + tail == tok.decode(ids[:cut]), (text, cut)
    assert owed > 0  # some cuts really do stop inside a character


@pytest.mark.parametrize("skip", [True, False])
def test_incremental_decoder_table_path_equals_the_checked_path(default_tok, skip):
    """The byte-level decoder's one-lookup path (`RxTokenizer.stream_bytes`) gives the deltas of the checked path
    (id check, special ids, token_bytes) for every id of the vocabulary, specials and partial characters included."""
    ids = list(range(default_tok.vocab_size)) + [7, 8191, 0, 300, 5000, 3]
    fast = default_tok.incremental_decoder(skip_special_tokens=skip)
    checked = default_tok.incremental_decoder(skip_special_tokens=skip)
    checked._bytes = None  # the path every id took before the table
    assert [fast.decode_token(i) for i in ids] == [checked.decode_token(i) for i in ids]
    assert fast.flush() == checked.flush()
    assert fast.text == checked.text
    with pytest.raises(TypeError):
        fast.decode_token(True)  # a bool is no id: the checked path's error, not table[1]


@pytest.mark.parametrize("text", [*UNICODE_TEXTS, "a" * 300, "\U0001F600" * 50, " x" * 40])
def test_max_token_count_bounds_the_encoding_of_byte_level_bpe(default_tok, tiny_tok, text):
    """The bound a server checks a prompt's room with, without tokenizing: never below the real count (the tiny
    byte BPE, with few merges, comes close to one token per byte)."""
    for tok in (default_tok, tiny_tok):
        bound = tok.max_token_count(text)
        assert bound is not None and len(tok.encode(text)) <= bound <= len(text.encode("utf-8")) + 1


def test_max_token_count_is_none_where_a_normalizer_may_lengthen_the_text(tmp_path):
    from tokenizers import normalizers

    tok = train_tokenizer(TINY_CORPUS, TokenizerTrainingConfig(kind="byte_bpe", vocab_size=300, min_frequency=1))
    tok._tokenizer.normalizer = normalizers.NFKC()  # U+FDFA alone becomes 18 characters
    tok._bytes_bound = None
    assert tok.max_token_count("\ufdfa") is None
    assert len(tok.encode("\ufdfa")) > len("\ufdfa".encode("utf-8")) + 1  # why no bound may be given
