"""Counter-based sampling noise: one uniform per (row stream, token step), computed on the host.

A sampled row of a batch draws its token by inverse-CDF sampling (`rxt.sampling`) from one uniform number, and
that number is a pure function of the row's key and the index of the token within the turn::

    key      = mix64(mix64(seed mod 2^64) XOR row)          (seeded; row = the row's index in a `generate` batch)
    u(t)     = top 53 bits of mix64(key + (t + 1) * GOLDEN) / 2^53      t = 0, 1, ... tokens of the turn

with ``mix64`` the SplitMix64 finaliser (so ``u(0), u(1), ...`` is exactly the SplitMix64 sequence seeded with
``key``). Nothing depends on which other rows share the batch, on the device, or on a generator's state: a seeded
session draws the same numbers alone, in a batch of the runtime, on the CPU and on a GPU. The numbers are
computed in Python integers (exact 64-bit arithmetic) and reach the device in the one small copy that carries
the batch's per-row sampling parameters, so the choice itself is one batched pass with no per-row work.

An unseeded row takes its key from the global torch (CPU) RNG when its stream is made, so ``torch.manual_seed``
still makes unseeded sampling reproducible.
"""

from __future__ import annotations

import torch

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment (2^64 / golden ratio, odd)


def mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that spreads every input bit over the output."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def random_key() -> int:
    """A 64-bit key from the global torch CPU RNG (two 32-bit draws; no device involved)."""
    lo, hi = torch.randint(0, 1 << 32, (2,), dtype=torch.int64).tolist()
    return (hi << 32) | lo


class SampleStream:
    """The noise of one sampled row: ``next_uniform()`` returns u(step) in [0, 1) and advances the step."""

    __slots__ = ("key", "step")

    def __init__(self, key: int, step: int = 0) -> None:
        self.key = key & MASK64
        self.step = step

    @classmethod
    def seeded(cls, seed: int, row: int = 0) -> SampleStream:
        """Row ``row``'s stream of a seeded batch (row 0 is what a session of the runtime uses)."""
        return cls(mix64(mix64(seed) ^ (row & MASK64)))

    def uniform(self, step: int) -> float:
        """u(step), without advancing."""
        return (mix64(self.key + (step + 1) * GOLDEN) >> 11) * 2.0**-53

    def next_uniform(self) -> float:
        u = self.uniform(self.step)
        self.step += 1
        return u


__all__ = ["GOLDEN", "MASK64", "SampleStream", "mix64", "random_key"]
