"""The composite memory-retention reward of MRL, on a 0..``scale`` scale (the RxT paper's MRL reward is 0-10).

For a target ``X`` (a token-id sequence) let

    BLEU_X = TensorBLEU sentence BLEU of the generated answer against X        (in [0, 1])
    COS_X  = max(0, cos(embed(generated), embed(X)))                             (in [0, 1])

and ``L = LengthReward(target_ratio)`` against the reference (in [0, 1]). The reference answer ``ref`` and the saved
data ``saved`` (what was written to memory earlier in the episode) are mixed with ``ref_weight = a_r`` and
``saved_weight = a_s``:

    standard:    B = (a_r * BLEU_ref + a_s * BLEU_saved) / (a_r + a_s)
                 C = (a_r * COS_ref  + a_s * COS_saved ) / (a_r + a_s)
    negative:    the saved terms become 1 - BLEU_saved and 1 - COS_saved: the answer is rewarded for matching the
                 reference and for NOT repeating the saved data;
    long_range:  as standard, with the episode's first interaction (``RewardInput.first_ids``) as the saved data
                 (falls back to ``saved_ids`` when ``first_ids`` is absent); the long-range strategy asks about
                 the first interaction after unrelated turns.

With ``V`` the fact-value term (`training.rewards.value`: 1 if the answer names the fact value the query asks
about, by the recall metric's rule, else 0) and, per row, ``w_v = value_weight`` where the row has a fact value
(``RewardInput.fact_values``) and ``w_v = 0`` where it has none (chitchat, turns that ask no fact):

    reward = scale * (bleu_weight * B + cosine_weight * C + length_weight * L + w_v * V)
                   / (bleu_weight + cosine_weight + length_weight + w_v)

so the reward lies in [0, scale] in every row. A term whose weight is 0 is not computed (no embedding function is
needed when ``cosine_weight == 0``; with ``value_weight == 0``, the default, the reward is the one without a value
term, bit for bit, and needs no texts). When the input has no saved data (or, in long_range mode, neither first nor
saved data) ``a_s`` is treated as 0; without a reference ``a_r`` (and the length term) must be 0; a positive
``value_weight`` needs ``fact_values`` (``None`` rows allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import EmbedFn, RewardInput
from .cosine import _resolve_embed, cosine_between
from .length import length_ratio_score
from .tensorbleu import SMOOTHINGS, tensor_sentence_bleu
from .value import fact_value_hits

__all__ = ["MODES", "MemoryRetentionReward"]

MODES = ("standard", "negative", "long_range")


@dataclass
class MemoryRetentionReward:
    """Weighted BLEU + cosine + length (+ fact-value) reward of the answer against reference and saved data.

    See the module docstring for the formula. ``embed`` as for :class:`~training.rewards.cosine.CosineReward`
    (default ``RewardInput.embed``, i.e. the model's shared embedding as the trainer sets it).
    """

    bleu_weight: float = 1.0
    cosine_weight: float = 1.0
    length_weight: float = 0.1
    value_weight: float = 0.0
    ref_weight: float = 0.5
    saved_weight: float = 0.5
    mode: str = "standard"
    scale: float = 10.0
    bleu_smoothing: str = "floor"
    max_n: int = 4
    target_ratio: float = 1.0
    embed: EmbedFn | nn.Embedding | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {MODES}")
        if self.bleu_smoothing not in SMOOTHINGS:
            raise ValueError(f"unknown smoothing {self.bleu_smoothing!r}; expected one of {SMOOTHINGS}")
        for name in ("bleu_weight", "cosine_weight", "length_weight", "value_weight", "ref_weight", "saved_weight"):
            if not getattr(self, name) >= 0:  # also NaN
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.bleu_weight + self.cosine_weight + self.length_weight <= 0:
            raise ValueError("bleu_weight + cosine_weight + length_weight must be > 0")
        if self.ref_weight + self.saved_weight <= 0 and self.bleu_weight + self.cosine_weight > 0:
            raise ValueError("ref_weight + saved_weight must be > 0")

    def _saved(self, inputs: RewardInput) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.mode == "long_range" and inputs.first_ids is not None:
            return inputs.first_ids, inputs.first_lengths
        if inputs.saved_ids is not None:
            return inputs.saved_ids, inputs.saved_lengths
        return None

    def components(self, inputs: RewardInput) -> dict[str, torch.Tensor]:
        """The unscaled parts, each ``(B,)`` in [0, 1]: ``bleu_ref``, ``bleu_saved``, ``cos_ref``, ``cos_saved``,
        ``length`` and ``value`` (the ones that apply; ``value`` is 0 in rows without a fact value), plus ``bleu``,
        ``cosine`` (mixed, mode applied) and ``reward``."""
        with torch.no_grad():
            return self._components(inputs)

    def _components(self, inputs: RewardInput) -> dict[str, torch.Tensor]:
        device = inputs.device
        gen, gen_len = inputs.generated_ids, inputs.generated_lengths
        targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        a_ref = self.ref_weight if inputs.reference_ids is not None else 0.0
        saved = self._saved(inputs)
        a_saved = self.saved_weight if saved is not None else 0.0
        if a_ref > 0:
            targets["ref"] = (inputs.reference_ids, inputs.reference_lengths)
        if a_saved > 0:
            targets["saved"] = saved
        needs_targets = self.bleu_weight + self.cosine_weight > 0
        if needs_targets and not targets:
            raise ValueError("MemoryRetentionReward needs reference_ids or saved data with a positive weight")
        if self.length_weight > 0 and inputs.reference_ids is None:
            raise ValueError("the length term needs reference_ids (or set length_weight=0)")
        if self.value_weight > 0 and inputs.fact_values is None:
            raise ValueError("the value term needs fact_values and generated_texts (or set value_weight=0)")

        out: dict[str, torch.Tensor] = {}
        if self.bleu_weight > 0:
            for name, (ids, lengths) in targets.items():
                out[f"bleu_{name}"] = tensor_sentence_bleu(
                    gen, ids, gen_len, lengths, max_n=self.max_n, smoothing=self.bleu_smoothing
                ).to(device)
        if self.cosine_weight > 0:
            embed = _resolve_embed(self.embed, inputs)
            gen_emb = embed(gen, gen_len)
            for name, (ids, lengths) in targets.items():
                out[f"cos_{name}"] = cosine_between(gen_emb, embed(ids, lengths)).clamp(0.0, 1.0).to(device)
        if self.length_weight > 0:
            out["length"] = length_ratio_score(
                gen_len.to(device), inputs.reference_lengths.to(device) * self.target_ratio
            )

        def mix(kind: str) -> torch.Tensor:
            total = torch.zeros(inputs.batch_size, device=device)
            if "ref" in targets:
                total = total + a_ref * out[f"{kind}_ref"]
            if "saved" in targets:
                s = out[f"{kind}_saved"]
                total = total + a_saved * ((1.0 - s) if self.mode == "negative" else s)
            return total / (a_ref + a_saved)

        zero = torch.zeros(inputs.batch_size, device=device)
        out["bleu"] = mix("bleu") if self.bleu_weight > 0 else zero
        out["cosine"] = mix("cos") if self.cosine_weight > 0 else zero
        length = out.get("length", zero)
        norm = self.bleu_weight + self.cosine_weight + self.length_weight
        total = self.bleu_weight * out["bleu"] + self.cosine_weight * out["cosine"] + self.length_weight * length
        if self.value_weight > 0:
            out["value"], has_value = fact_value_hits(inputs.generated_texts, inputs.fact_values, device)
            w_v = self.value_weight * has_value.float()  # no term (and no weight in the norm) for rows without one
            out["reward"] = self.scale * (total + w_v * out["value"]) / (norm + w_v)
        else:
            out["reward"] = self.scale * total / norm
        return out

    def __call__(self, inputs: RewardInput) -> torch.Tensor:
        return self.components(inputs)["reward"]
