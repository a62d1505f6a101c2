"""Build the tokenizer shipped as ``rxt/assets/tokenizer.json``.

    python examples/build_default_tokenizer.py --out rxt/assets/tokenizer.json

Byte-level BPE, 8192 ids, special tokens [PAD] [UNK] [BOS] [EOS] [MASK] [Q] [A] [T] [I] as ids 0..8, trained on

- the ``chitchat-dataset`` package (Chit Chat Challenge conversations; one training text per message, its
  utterances joined by newlines), and
- the English part of the ``chatterbot-corpus`` package (``pip install chatterbot-corpus==1.3.3``; one text per
  statement), unless ``--sources chitchat`` is given.

Both are read offline from the installed packages, in a fixed order, so the same packages give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from rxt.special_tokens import ALL_SPECIAL_TOKENS
from training.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

SOURCES = ("chitchat", "chatterbot")


def chitchat_texts() -> Iterator[str]:
    """One text per message of every conversation, in the dataset file's order."""
    import chitchat_dataset

    for conversation in chitchat_dataset.Dataset().values():
        for message in conversation["messages"]:
            text = "\n".join(utterance["text"] for utterance in message if utterance.get("text"))
            if text:
                yield text


def chatterbot_texts() -> Iterator[str]:
    """One text per statement of the English chatterbot corpus, files in sorted order."""
    try:
        corpus = importlib.import_module("chatterbot_corpus")
    except ImportError as exc:
        raise SystemExit(
            "chatterbot-corpus is not installed: `pip install chatterbot-corpus==1.3.3`, "
            "or pass --sources chitchat"
        ) from exc
    import yaml

    english = Path(corpus.__file__).parent / "data" / "english"
    for path in sorted(english.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            for statement in conversation:
                if isinstance(statement, str) and statement.strip():
                    yield statement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("rxt/assets/tokenizer.json"), help="output file")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument(
        "--sources", default=",".join(SOURCES), help=f"comma-separated subset of {','.join(SOURCES)}"
    )
    args = parser.parse_args(argv)

    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown or not sources:
        parser.error(f"--sources must name some of {SOURCES}, got {args.sources!r}")
    readers = {"chitchat": chitchat_texts, "chatterbot": chatterbot_texts}
    texts: list[str] = []
    for source in sources:
        before = len(texts)
        texts.extend(readers[source]())
        print(f"{source}: {len(texts) - before} texts", file=sys.stderr)
    print(f"total: {len(texts)} texts, {sum(map(len, texts))} characters", file=sys.stderr)

    config = TokenizerTrainingConfig(kind="byte_bpe", vocab_size=args.vocab_size, min_frequency=args.min_frequency)
    start = time.perf_counter()
    tokenizer = train_tokenizer(texts, config)
    print(f"trained in {time.perf_counter() - start:.1f} s: {tokenizer}", file=sys.stderr)

    for expected_id, token in enumerate(ALL_SPECIAL_TOKENS):
        assert tokenizer.token_to_id(token) == expected_id, token
    probe = "Hello, world!  Ça va? 😀 東京\n  ok"
    assert tokenizer.decode(tokenizer.encode(probe)) == probe

    out: Path = args.out
    if out.suffix != ".json":
        parser.error(f"--out must name a .json file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(tokenizer.to_str(), encoding="utf-8")
    os.replace(tmp, out)  # atomic: readers see the old file or the new one, never half of it
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
