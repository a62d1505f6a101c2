"""Open-vocabulary fact values for the synthetic memory dialogues: made up per episode, never a closed list.

A value is drawn from a seeded generator (names built from syllables, letter-digit codes, numbers, hyphenated
passphrases), so a model cannot memorise "the" value of a fact type: the space holds millions of strings and
the only way to answer is to copy the value from where it was stated.

Held-out split. Every value is made of **atoms** (a made-up word, a code or a number; a two-word name has two
atoms, a passphrase ``velmo-tarik`` two). Each atom belongs to exactly one split, fixed by a hash of its lower-cased
text (:func:`atom_split`: one atom in :data:`EVAL_EVERY` is ``eval``), and a value of a split is built only from
atoms of that split (the generator re-draws an atom until its split matches). So an evaluation value, or any of
its words, never occurs in training data, whatever the seed or the number of episodes: the two spaces are
disjoint by construction, and the tests check it on generated text. Made-up words that collide with a word of the
fixed templates (``RESERVED_WORDS``, filled in by :mod:`training.data.synthetic_vocab`) are re-drawn too, so a
template can never state an evaluation value by accident.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

EVAL_EVERY = 4
"""One atom in ``EVAL_EVERY`` (by hash) belongs to the ``eval`` split, the others to ``train``."""
SPLITS: tuple[str, ...] = ("train", "eval")

# Syllables of the made-up words: 20 onsets * 7 vowels * 6 codas = 840 syllables, so the 2-3 syllable words
# span about 7 * 10^5 (two syllables) to 6 * 10^8 (three); short syllables keep a name at a few BPE tokens.
_ONSETS = ("b", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "st",
           "sh")
_VOWELS = ("a", "e", "i", "o", "u", "a", "ai")
_CODAS = ("", "", "", "n", "r", "l")
_CODE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # no I/O: they read as digits

RESERVED_WORDS: set[str] = set()
"""Lower-cased words of every fixed template and filler text; a made-up atom equal to one is re-drawn."""


def atom_split(atom: str) -> str:
    """The split (``"train"`` or ``"eval"``) an atom belongs to: a hash of its lower-cased text."""
    digest = hashlib.sha256(atom.lower().encode()).digest()
    return "eval" if int.from_bytes(digest[:4], "big") % EVAL_EVERY == 0 else "train"


def value_atoms(value: str) -> list[str]:
    """The atoms of a generated value: its words, and the parts of a hyphenated passphrase (codes keep their
    hyphen: ``TK-4821`` is one atom)."""
    atoms: list[str] = []
    for word in value.split():
        if "-" in word and not any(c.isdigit() for c in word):
            atoms.extend(word.split("-"))
        else:
            atoms.append(word)
    return atoms


def value_split(value: str) -> str | None:
    """The split of a generated value (``None`` when its atoms disagree: no generator emits such a value)."""
    splits = {atom_split(a) for a in value_atoms(value)}
    return splits.pop() if len(splits) == 1 else None


def _draw(rng: random.Random, split: str, make: Callable[[random.Random], str]) -> str:
    while True:  # 1 / EVAL_EVERY of draws land in eval: a handful of tries at most, in expectation
        atom = make(rng)
        if atom_split(atom) == split and atom.lower() not in RESERVED_WORDS:
            return atom


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(rng.choice((2, 2, 2, 3))))


def made_up_word(rng: random.Random, split: str) -> str:
    """A pronounceable made-up word of ``split`` (lower case), e.g. ``velmor``."""
    return _draw(rng, split, _word)


def name(rng: random.Random, split: str, *, max_words: int = 1) -> str:
    """A capitalised made-up name of 1..``max_words`` words, e.g. ``Kavrin`` or ``Tosha Velmor``."""
    words = rng.randint(1, max_words)
    return " ".join(made_up_word(rng, split).capitalize() for _ in range(words))


def code(rng: random.Random, split: str) -> str:
    """A letter-digit code, e.g. ``TK-4821`` or ``QX7-305``."""
    def make(r: random.Random) -> str:
        letters = "".join(r.choice(_CODE_LETTERS) for _ in range(r.choice((2, 2, 3))))
        digits = str(r.randint(10, 9999))
        return f"{letters}-{digits}" if r.random() < 0.7 else f"{letters}{digits}"

    return _draw(rng, split, make)


def number(rng: random.Random, split: str) -> str:
    """A number of 4 or 5 digits (larger than any number the filler turns use), e.g. ``48213``."""
    return _draw(rng, split, lambda r: str(r.randint(1000, 99_999)))


def passphrase(rng: random.Random, split: str) -> str:
    """Two or three made-up words joined by hyphens, e.g. ``velmo-tarik``."""
    return "-".join(made_up_word(rng, split) for _ in range(rng.choice((2, 2, 3))))


VALUE_KINDS: dict[str, Callable[[random.Random, str], str]] = {
    "name": name,
    "full_name": lambda rng, split: name(rng, split, max_words=2),
    "place": name,
    "code": code,
    "number": number,
    "passphrase": passphrase,
}
"""Value kind -> generator ``(rng, split) -> value``; fact types name their kind (`FactType.kind`)."""


def generate_value(kind: str, rng: random.Random, split: str) -> str:
    """A fresh value of ``kind`` in ``split``."""
    if kind not in VALUE_KINDS:
        raise ValueError(f"value kind must be one of {sorted(VALUE_KINDS)}, got {kind!r}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return VALUE_KINDS[kind](rng, split)


__all__ = [
    "EVAL_EVERY",
    "RESERVED_WORDS",
    "SPLITS",
    "VALUE_KINDS",
    "atom_split",
    "code",
    "generate_value",
    "made_up_word",
    "name",
    "number",
    "passphrase",
    "value_atoms",
    "value_split",
]
