"""Stage 0 of the curriculum: train a tokenizer with the RxT special tokens.

Every kind registers :data:`rxt.special_tokens.ALL_SPECIAL_TOKENS` first, so ``[PAD]`` .. ``[I]`` get ids 0..8,
and gets a decoder that matches its pre-tokenizer and a padding config with ``[PAD]``.

- ``byte_bpe`` (the project's default): byte-level BPE, no normalizer, the 256-byte alphabet always in the vocab
  (no ``[UNK]`` ever), ``ByteLevel`` decoder: ``decode(encode(text)) == text`` exactly for any text.
- ``bpe`` and ``unigram``: ``Metaspace`` pre-tokenizer and decoder (SentencePiece style). Runs of whitespace and
  newlines are not preserved exactly, and characters unseen in training become ``[UNK]``.
- ``wordpiece``: BERT-style whitespace/punctuation split, ``##`` continuation prefix, ``WordPiece`` decoder.
  Spacing around punctuation is reconstructed, not preserved.

Training runs in the ``tokenizers`` Rust backend; given the same texts in the same order it is deterministic as
far as that backend allows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from rxt.special_tokens import ALL_SPECIAL_TOKENS, SpecialTokens
from rxt.tokenizer import RxTokenizer

TOKENIZER_KINDS: tuple[str, ...] = ("byte_bpe", "bpe", "wordpiece", "unigram")
"""The tokenizer kinds :func:`train_tokenizer` can build."""

_BYTE_ALPHABET_SIZE = 256
_METASPACE = "\u2581"
_WORDPIECE_PREFIX = "##"


@dataclass(frozen=True)
class TokenizerTrainingConfig:
    """How to train a tokenizer.

    Attributes:
        kind: one of :data:`TOKENIZER_KINDS`.
        vocab_size: the target number of ids, special tokens included. byte_bpe needs at least
            256 + len(ALL_SPECIAL_TOKENS) (the byte alphabet plus the special tokens).
        min_frequency: a merge (BPE) or word piece (WordPiece) must occur this often to be learned; ignored by
            unigram.
        show_progress: show the backend's progress bar.
    """

    kind: str = "byte_bpe"
    vocab_size: int = 8192
    min_frequency: int = 2
    show_progress: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"kind must be one of {TOKENIZER_KINDS}, got {self.kind!r}")
        minimum = len(ALL_SPECIAL_TOKENS) + (_BYTE_ALPHABET_SIZE if self.kind == "byte_bpe" else 1)
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int):
            raise TypeError(f"vocab_size must be an int, got {type(self.vocab_size).__name__}")
        if self.vocab_size < minimum:
            raise ValueError(f"vocab_size must be at least {minimum} for kind {self.kind!r}, got {self.vocab_size}")
        if isinstance(self.min_frequency, bool) or not isinstance(self.min_frequency, int):
            raise TypeError(f"min_frequency must be an int, got {type(self.min_frequency).__name__}")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {self.min_frequency}")


def _build(config: TokenizerTrainingConfig) -> tuple[Tokenizer, trainers.Trainer]:
    specials = list(ALL_SPECIAL_TOKENS)
    unk = SpecialTokens.UNK.value
    common = {"vocab_size": config.vocab_size, "special_tokens": specials, "show_progress": config.show_progress}
    if config.kind == "byte_bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        # add_prefix_space=False: the text is encoded exactly as given, so decoding restores it exactly.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            min_frequency=config.min_frequency, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common
        )
    elif config.kind == "bpe":
        tokenizer = Tokenizer(models.BPE(unk_token=unk))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
        trainer = trainers.BpeTrainer(min_frequency=config.min_frequency, **common)
    elif config.kind == "unigram":
        tokenizer = Tokenizer(models.Unigram())
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_METASPACE, prepend_scheme="always")
        tokenizer.decoder = decoders.Metaspace(replacement=_METASPACE, prepend_scheme="always")
        trainer = trainers.UnigramTrainer(unk_token=unk, **common)
    else:  # wordpiece
        tokenizer = Tokenizer(models.WordPiece(unk_token=unk, continuing_subword_prefix=_WORDPIECE_PREFIX))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix=_WORDPIECE_PREFIX, cleanup=True)
        trainer = trainers.WordPieceTrainer(
            min_frequency=config.min_frequency, continuing_subword_prefix=_WORDPIECE_PREFIX, **common
        )
    return tokenizer, trainer


def train_tokenizer(texts: Iterable[str], config: TokenizerTrainingConfig | None = None) -> RxTokenizer:
    """Train a tokenizer of ``config.kind`` on ``texts`` and return it wrapped as an :class:`RxTokenizer`.

    The special tokens get ids 0..8 in :data:`ALL_SPECIAL_TOKENS` order; the tokenizer pads with ``[PAD]``.

    Raises:
        TypeError: if an item of ``texts`` is not a string.
        RuntimeError: if the backend did not give the special tokens ids 0..8.
    """
    config = config or TokenizerTrainingConfig()
    tokenizer, trainer = _build(config)

    def checked(items: Iterable[str]) -> Iterable[str]:
        for index, text in enumerate(items):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str, got {type(text).__name__}")
            yield text

    tokenizer.train_from_iterator(checked(texts), trainer=trainer)
    for expected_id, token in enumerate(ALL_SPECIAL_TOKENS):
        actual = tokenizer.token_to_id(token)
        if actual != expected_id:
            raise RuntimeError(f"special token {token!r} got id {actual}, expected {expected_id}")
    pad = SpecialTokens.PAD.value
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id(pad), pad_token=pad)
    return RxTokenizer(tokenizer)


__all__ = ["TOKENIZER_KINDS", "TokenizerTrainingConfig", "train_tokenizer"]
