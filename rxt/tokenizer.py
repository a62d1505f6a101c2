"""The RxT tokenizer: a thin, validated wrapper around a ``tokenizers.Tokenizer``.

The project's tokenizer is a byte-level BPE with a real ``ByteLevel`` decoder and no normalizer, so
``decode(encode(text)) == text`` for any Python string (emoji, accents, CJK, leading spaces, newlines).

Special-token strings that occur *inside* user text (for example a user typing ``"[EOS]"``) are encoded as ordinary
text by default, never as the special ids: special ids are only ever inserted by :mod:`rxt.template`, so a query
cannot forge the structure of an interaction. Pass ``allow_special=True`` to :meth:`RxTokenizer.encode` to parse
them as special tokens instead.
"""

from __future__ import annotations

import codecs
import json
import operator
import os
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from rxt.atomic_io import atomic_write_text
from rxt.special_tokens import ALL_SPECIAL_TOKENS, SpecialTokens

TOKENIZER_FILE = "tokenizer.json"
"""File name used by :meth:`RxTokenizer.save_pretrained` and :meth:`RxTokenizer.from_pretrained`."""
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
"""What :meth:`RxTokenizer.save_pretrained` writes (and what is fetched of a Hub repo)."""

_DEFAULT_ASSET = ("assets", TOKENIZER_FILE)
_REPLACEMENT_CHAR = "\ufffd"


@lru_cache(maxsize=1)
def _byte_level_char_to_byte() -> dict[str, int]:
    """The inverse of the byte-level alphabet: each of the 256 printable stand-in characters -> its byte.

    Bytes that are printable in Latin-1 ("!".."~", "¡".."¬", "®".."ÿ") stand for themselves; the remaining bytes
    are given the code points 256, 257, ... in increasing byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    keep = set(printable)
    mapping: dict[str, int] = {}
    extra = 0
    for byte in range(256):
        if byte in keep:
            mapping[chr(byte)] = byte
        else:
            mapping[chr(256 + extra)] = byte
            extra += 1
    return mapping


def _as_id_list(ids: Iterable[int] | Any) -> list[int]:
    """Accept a list/tuple of ints or a 1-D tensor/array and return a plain list of Python ints."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    out = []
    for i in ids:
        if isinstance(i, bool):
            raise TypeError(f"token ids must be integers, got bool ({i!r})")
        try:
            out.append(operator.index(i))
        except TypeError:
            raise TypeError(f"token ids must be integers, got {type(i).__name__} ({i!r})") from None
    return out


class RxTokenizer:
    """A ``tokenizers.Tokenizer`` with the RxT special tokens, exact decoding and an incremental decoder.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` in which every token of
            :data:`~rxt.special_tokens.ALL_SPECIAL_TOKENS` exists and is registered as a special token. It is
            copied, never modified.

    Raises:
        ValueError: naming the first special token that is missing or not registered as special.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        added = tokenizer.get_added_tokens_decoder()
        special_ids: dict[str, int] = {}
        for token in ALL_SPECIAL_TOKENS:
            token_id = tokenizer.token_to_id(token)
            if token_id is None:
                raise ValueError(f"special token {token!r} is missing from the tokenizer's vocabulary")
            entry = added.get(token_id)
            if entry is None or not entry.special:
                raise ValueError(
                    f"special token {token!r} (id {token_id}) is in the vocabulary but not registered as a "
                    "special token; add it with Tokenizer.add_special_tokens"
                )
            special_ids[token] = token_id
        # Our own copy: encoding options below must not leak into the caller's object. Padding and truncation
        # are switched off in the copy (encode must never pad or cut text) and restored by to_str().
        source = json.loads(tokenizer.to_str())
        self._saved_options = {key: source.get(key) for key in ("padding", "truncation")}
        self._tokenizer = Tokenizer.from_str(tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        # Special-token strings inside text are plain text (see the module docstring).
        self._tokenizer.encode_special_tokens = True
        self._special_token_ids = special_ids
        self._all_special_ids = frozenset(i for i, entry in added.items() if entry.special)
        self._special_contents = {entry.content: i for i, entry in added.items() if entry.special}
        self._special_pattern = re.compile(
            "(" + "|".join(re.escape(t) for t in sorted(self._special_contents, key=len, reverse=True)) + ")"
        )
        self._vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        decoder = source.get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        self._id_bytes: list[bytes] | None = None
        self._stream_tables: dict[bool, list[bytes | None]] = {}  # skip_special_tokens -> `stream_bytes`
        self._bytes_bound: bool | None = None  # whether `max_token_count` holds (found on first use)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RxTokenizer:
        """Load a ``tokenizer.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
    ) -> RxTokenizer:
        """Load from a directory written by :meth:`save_pretrained`, a ``tokenizer.json`` file, or a Hugging Face
        Hub repo id (``owner/name``, fetched into the Hub cache; the keyword arguments are passed to it).

        The directory-or-Hub-id rule is the one of `rxt.resolve` (a mistyped local path is an error that says so).
        """
        from rxt.resolve import HubOptions, resolve_pretrained

        path = Path(name_or_path)
        if path.is_file():
            return cls.from_file(path)
        options = HubOptions(revision=revision, cache_dir=cache_dir, token=token,
                             local_files_only=local_files_only, force_download=force_download)
        directory = resolve_pretrained(name_or_path, options=options, allow_patterns=TOKENIZER_FILES)
        return cls.from_file(directory / TOKENIZER_FILE)

    @classmethod
    def from_str(cls, json_text: str) -> RxTokenizer:
        """Load from the JSON text of a serialized ``tokenizers.Tokenizer``."""
        return cls(Tokenizer.from_str(json_text))

    @classmethod
    def default(cls) -> RxTokenizer:
        """The tokenizer shipped with the package (``rxt/assets/tokenizer.json``, byte-level BPE, 8192 ids).

        Rebuild it with ``python examples/build_default_tokenizer.py --out rxt/assets/tokenizer.json``.
        """
        asset = resources.files("rxt").joinpath(*_DEFAULT_ASSET)
        return cls.from_str(asset.read_text(encoding="utf-8"))

    def to_str(self) -> str:
        """The JSON text of the tokenizer, padding and truncation settings as given (what save_pretrained writes)."""
        data = json.loads(self._tokenizer.to_str())
        data.update(self._saved_options)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    def hf_config(self) -> dict[str, Any]:
        """``tokenizer_config.json`` for ``transformers.PreTrainedTokenizerFast``: the special tokens by role and
        the chat template (`rxt.chat_template`), so its users get the ids of `rxt.template`."""
        from rxt.chat_template import CHAT_TEMPLATE

        return {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **self.special_tokens_map(),
            "clean_up_tokenization_spaces": False,
            "chat_template": CHAT_TEMPLATE,
        }

    @staticmethod
    def special_tokens_map() -> dict[str, Any]:
        """``special_tokens_map.json``: bos/eos/pad/unk/mask and the interaction markers as extra specials."""
        roles = {"bos_token": SpecialTokens.BOS, "eos_token": SpecialTokens.EOS, "pad_token": SpecialTokens.PAD,
                 "unk_token": SpecialTokens.UNK, "mask_token": SpecialTokens.MASK}
        extra = [SpecialTokens.QUERY, SpecialTokens.ANSWER, SpecialTokens.THINK, SpecialTokens.INTERNAL]
        return {**{k: str(v) for k, v in roles.items()}, "additional_special_tokens": [str(t) for t in extra]}

    def _files(self) -> dict[str, str]:
        # tokenizer.json first: the other two describe it.
        return {
            TOKENIZER_FILE: self.to_str(),
            TOKENIZER_CONFIG_FILE: json.dumps(self.hf_config(), indent=2, ensure_ascii=False) + "\n",
            SPECIAL_TOKENS_MAP_FILE: json.dumps(self.special_tokens_map(), indent=2) + "\n",
        }

    def write_files(self, directory: str | os.PathLike[str]) -> None:
        """Write the tokenizer files into ``directory`` plainly (for a caller that makes the directory atomic)."""
        for name, text in self._files().items():
            (Path(directory) / name).write_text(text, encoding="utf-8")

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into
        ``directory``, each atomically (temp file, fsync, ``os.replace``); return the ``tokenizer.json`` path.

        The directory is created if needed. On any error the temp file is removed and the existing files are left
        untouched.
        """
        paths = [atomic_write_text(Path(directory) / name, text) for name, text in self._files().items()]
        return paths[0]

    # ------------------------------------------------------------------ vocabulary
    @property
    def tokenizer(self) -> Tokenizer:
        """The wrapped ``tokenizers.Tokenizer`` (this wrapper's private copy, without padding or truncation)."""
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included; valid ids are ``0 .. vocab_size - 1``."""
        return self._vocab_size

    def __len__(self) -> int:
        return self._vocab_size

    @property
    def is_byte_level(self) -> bool:
        """True when the decoder is ``ByteLevel`` (exact round trip and byte-exact incremental decoding)."""
        return self._byte_level

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of every token registered as special (those skipped by ``decode(skip_special_tokens=True)``)."""
        return self._all_special_ids

    def token_to_id(self, token: str) -> int:
        """The id of ``token``; raises ``ValueError`` if the vocabulary does not contain it."""
        token_id = self._tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"token {token!r} is not in the vocabulary")
        return token_id

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry (the raw token string, e.g. ``"Ġhello"`` for byte-level BPE) of an id."""
        self._check_id(token_id)
        token = self._tokenizer.id_to_token(token_id)
        if token is None:
            raise ValueError(f"token id {token_id} has no vocabulary entry (vocab_size {self._vocab_size})")
        return token

    def special_id(self, token: SpecialTokens | str) -> int:
        """The id of a special token, e.g. ``special_id(SpecialTokens.QUERY)``."""
        try:
            return self._special_token_ids[str(token)]
        except KeyError:
            raise ValueError(f"{token!r} is not one of the special tokens {ALL_SPECIAL_TOKENS}") from None

    @property
    def pad_id(self) -> int:
        return self._special_token_ids[SpecialTokens.PAD]

    @property
    def unk_id(self) -> int:
        return self._special_token_ids[SpecialTokens.UNK]

    @property
    def bos_id(self) -> int:
        return self._special_token_ids[SpecialTokens.BOS]

    @property
    def eos_id(self) -> int:
        return self._special_token_ids[SpecialTokens.EOS]

    @property
    def mask_id(self) -> int:
        return self._special_token_ids[SpecialTokens.MASK]

    @property
    def query_id(self) -> int:
        return self._special_token_ids[SpecialTokens.QUERY]

    @property
    def answer_id(self) -> int:
        return self._special_token_ids[SpecialTokens.ANSWER]

    @property
    def think_id(self) -> int:
        return self._special_token_ids[SpecialTokens.THINK]

    @property
    def internal_id(self) -> int:
        return self._special_token_ids[SpecialTokens.INTERNAL]

    # ------------------------------------------------------------------ encoding and decoding
    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``; no special tokens are added.

        Args:
            text: any string.
            allow_special: when False (default) special-token strings inside ``text`` are encoded as plain text;
                when True they become their special ids.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not allow_special:
            return self._tokenizer.encode(text, add_special_tokens=False).ids
        ids: list[int] = []
        for piece in self._special_pattern.split(text):
            if not piece:
                continue
            special = self._special_contents.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._tokenizer.encode(piece, add_special_tokens=False).ids)
        return ids

    def max_token_count(self, text: str) -> int | None:
        """An upper bound on ``len(self.encode(text))`` found without encoding, or None where no cheap bound holds.

        A byte-level BPE without a normalizer maps every byte of the UTF-8 text to one symbol and merges symbols,
        so no token covers less than one byte: at most one token per byte, plus one for a prefix space. (A
        normalizer may lengthen the text, e.g. NFKC; then None.) Lets a server check that a short prompt fits
        without tokenizing it; each tokenizer call lets the GIL go, and a busy server's other thread then holds it."""
        if self._bytes_bound is None:
            tk = self._tokenizer
            self._bytes_bound = (tk.normalizer is None and type(tk.pre_tokenizer).__name__ == "ByteLevel"
                                 and type(tk.model).__name__ == "BPE")
        if not self._bytes_bound:
            return None
        return len(text.encode("utf-8", "surrogatepass")) + 1

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (parallel in the Rust backend; no padding)."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        return [enc.ids for enc in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def _check_id(self, token_id: int) -> None:
        if isinstance(token_id, bool) or not isinstance(token_id, int):
            raise TypeError(f"token id must be an int, got {type(token_id).__name__} ({token_id!r})")
        if not 0 <= token_id < self._vocab_size:
            raise ValueError(f"token id {token_id} is out of range for vocab_size {self._vocab_size}")

    def decode(self, ids: Iterable[int] | Any, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a sequence of ints or a 1-D tensor).

        Raises:
            ValueError: naming the first id outside ``0 .. vocab_size - 1``.
        """
        id_list = _as_id_list(ids)
        for token_id in id_list:
            self._check_id(token_id)
        return self._tokenizer.decode(id_list, skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a byte-level token stands for (only for byte-level tokenizers)."""
        if not self._byte_level:
            raise ValueError("token_bytes needs a byte-level tokenizer (decoder type ByteLevel)")
        self._check_id(token_id)
        if self._id_bytes is None:
            self._id_bytes = self._build_id_bytes()
        return self._id_bytes[token_id]

    def stream_bytes(self, skip_special_tokens: bool) -> list[bytes | None]:
        """Per id, the bytes `IncrementalDecoder.decode_token` feeds its UTF-8 decoder (None: a special token it
        skips), for byte-level tokenizers: one list lookup per token on the serving path, made once."""
        table = self._stream_tables.get(skip_special_tokens)
        if table is None:
            if self._id_bytes is None:
                self._id_bytes = self._build_id_bytes()
            skipped = self.special_ids if skip_special_tokens else frozenset()
            table = self._stream_tables[skip_special_tokens] = [
                None if i in skipped else piece for i, piece in enumerate(self._id_bytes)]
        return table

    def _build_id_bytes(self) -> list[bytes]:
        # Mirrors the ByteLevel decoder: a token made only of byte-level stand-in characters is mapped back to its
        # bytes; any other token (e.g. an added token with characters outside the alphabet) is taken as UTF-8.
        char_to_byte = _byte_level_char_to_byte()
        table: list[bytes] = []
        for token_id in range(self._vocab_size):
            token = self._tokenizer.id_to_token(token_id)
            if token is None:
                table.append(b"")
            elif all(ch in char_to_byte for ch in token):
                table.append(bytes(char_to_byte[ch] for ch in token))
            else:
                table.append(token.encode("utf-8"))
        return table

    def incremental_decoder(self, skip_special_tokens: bool = True) -> IncrementalDecoder:
        """A fresh :class:`IncrementalDecoder` over this tokenizer."""
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        kind = "byte-level" if self._byte_level else "non-byte-level"
        return f"RxTokenizer(vocab_size={self._vocab_size}, {kind})"


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas, emitting only complete characters.

    A multi-byte UTF-8 character (an emoji, a CJK ideograph) is often split over several byte-level tokens;
    :meth:`decode_token` returns ``""`` until the character is complete and then returns it. The concatenation
    of every delta plus :meth:`flush` equals ``tokenizer.decode(all_ids, skip_special_tokens)``.

    For byte-level tokenizers this is exact: token bytes go through an incremental UTF-8 decoder. For other
    tokenizers a window of recent tokens is re-decoded and the new suffix emitted once it does not end in
    U+FFFD; that matches the full decode whenever the tokenizer's decoder is left-to-right stable (Metaspace,
    WordPiece without clean-up), which covers the kinds trained by this project up to WordPiece's punctuation
    clean-up.

    Example::

        dec = tokenizer.incremental_decoder()
        for token_id in stream:
            print(dec.decode_token(token_id), end="", flush=True)
        print(dec.flush())
    """

    def __init__(self, tokenizer: RxTokenizer, skip_special_tokens: bool = True) -> None:
        self._tok = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._bytes = tokenizer.stream_bytes(skip_special_tokens) if tokenizer.is_byte_level else None
        self.reset()

    def reset(self) -> None:
        """Forget everything decoded so far (start a new stream)."""
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self._emitted: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        return "".join(self._emitted)

    def _emit(self, delta: str) -> str:
        if delta:
            self._emitted.append(delta)
        return delta

    def decode_token(self, token_id: int) -> str:
        """Feed one id; return the newly completed text (``""`` while a character is still incomplete)."""
        table = self._bytes
        if table is not None and type(token_id) is int and 0 <= token_id < len(table):
            # Byte-level, a valid id: one lookup (a server decodes every token of every session this way).
            piece = table[token_id]
            if piece is None:
                return ""
            text = self._utf8.decode(piece)
            if text:
                self._emitted.append(text)
            return text
        self._tok._check_id(token_id)
        if self.skip_special_tokens and token_id in self._tok.special_ids:
            return ""
        if self._tok.is_byte_level:
            return self._emit(self._utf8.decode(self._tok.token_bytes(token_id)))
        self._ids.append(token_id)
        prefix_text = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], False)
        new_text = self._tok.decode(self._ids[self._prefix_offset :], False)
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT_CHAR):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return self._emit(new_text[len(prefix_text) :])
        return ""

    def decode_tokens(self, ids: Iterable[int] | Any) -> str:
        """Feed several ids; return the concatenated deltas."""
        return "".join(self.decode_token(i) for i in _as_id_list(ids))

    def flush(self) -> str:
        """End of stream: return whatever is still pending (an incomplete character becomes U+FFFD)."""
        if self._tok.is_byte_level:
            return self._emit(self._utf8.decode(b"", final=True))
        if self._read_offset == len(self._ids):
            return ""
        prefix_text = self._tok.decode(self._ids[self._prefix_offset : self._read_offset], False)
        new_text = self._tok.decode(self._ids[self._prefix_offset :], False)
        self._prefix_offset = self._read_offset = len(self._ids)
        return self._emit(new_text[len(prefix_text) :])


__all__ = ["TOKENIZER_CONFIG_FILE", "TOKENIZER_FILE", "TOKENIZER_FILES", "IncrementalDecoder", "RxTokenizer"]
