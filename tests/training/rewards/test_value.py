"""The fact-value term: the recall rule on hand-made answers, and its place in `MemoryRetentionReward` (off by
default, bit for bit; per-row weight and normalisation; rows without a value keep the reward without the term)."""

import pytest
import torch
from torch import nn

from rxt.recall import recall_hit
from training.config import ConfigError
from training.mrl.curriculum import MRLConfig
from training.rewards import MemoryRetentionReward, RewardInput
from training.rewards.value import fact_value_hits

# (answer, value, expected V): the whole-word rule of rxt.recall, case and punctuation other than "-" ignored
CASES = [
    ("Your cat is called Velmor.", "Velmor", 1.0),
    ("Your cat is called Tosh.", "Velmor", 0.0),
    ("VELMOR!", "Velmor", 1.0),
    ("it's velmor, I think", "Velmor", 1.0),
    ("Velmoring is a verb", "Velmor", 0.0),  # whole words only
    ("The code is 4471-B.", "4471-b", 1.0),
    ("The code is 4471-BX.", "4471-B", 0.0),  # a hyphen joins words
    ("copper-falconry", "copper-falcon", 0.0),
    ("Charcoal, grey.", "charcoal grey", 1.0),  # punctuation becomes a space
    ("charcoal", "charcoal grey", 0.0),
    ("", "Velmor", 0.0),
]


def test_value_hits_follow_the_recall_rule():
    texts, values, expected = zip(*CASES, strict=True)
    hits, has_value = fact_value_hits(texts, values)
    assert hits.dtype == torch.float32 and has_value.dtype == torch.bool
    assert hits.tolist() == list(expected)
    assert hits.tolist() == [float(recall_hit(t, v)) for t, v in zip(texts, values, strict=True)]  # one rule
    assert has_value.all()


def test_rows_without_a_value_have_no_term():
    hits, has_value = fact_value_hits(["Velmor", "Velmor", "Velmor"], ["Velmor", None, ""])
    assert hits.tolist() == [1.0, 0.0, 0.0] and has_value.tolist() == [True, False, False]
    with pytest.raises(ValueError, match="2 texts but 1 values"):
        fact_value_hits(["a", "b"], ["a"])


VOCAB, B = 200, len(CASES) + 3


@pytest.fixture
def inputs():
    """Random ids (BLEU, cosine and length vary per row) with the hand-made texts; the last 3 rows ask no value."""
    g = torch.Generator().manual_seed(5)
    ids = [torch.randint(10, VOCAB, (B, 12), generator=g) for _ in range(3)]
    lens = [torch.randint(4, 13, (B,), generator=g) for _ in range(3)]
    texts = [t for t, _, _ in CASES] + ["Velmor", "Velmor", "hello"]
    values = [v for _, v, _ in CASES] + [None, "", None]
    return RewardInput(ids[0], lens[0], ids[1], lens[1], ids[2], lens[2], ids[2], lens[2],
                       generated_texts=texts, fact_values=values)


@pytest.fixture
def embedding():
    torch.manual_seed(0)
    return nn.Embedding(VOCAB, 16)


@pytest.mark.parametrize("mode", ["standard", "long_range"])
def test_default_weight_is_todays_reward_bit_for_bit(inputs, embedding, mode):
    reward = MemoryRetentionReward(embed=embedding, mode=mode)
    assert reward.value_weight == 0.0
    parts = reward.components(inputs)
    assert "value" not in parts
    # the formula without a value term, written as before the term existed
    today = reward.scale * (reward.bleu_weight * parts["bleu"] + reward.cosine_weight * parts["cosine"]
                            + reward.length_weight * parts["length"]) / (
        reward.bleu_weight + reward.cosine_weight + reward.length_weight)
    assert torch.equal(parts["reward"], today)
    no_texts = RewardInput(inputs.generated_ids, inputs.generated_lengths, inputs.reference_ids,
                           inputs.reference_lengths, inputs.saved_ids, inputs.saved_lengths)
    assert torch.equal(reward(no_texts), parts["reward"])  # weight 0 needs no texts and ignores them


@pytest.mark.parametrize("value_weight", [1.0, 3.0])
def test_value_term_per_row(inputs, embedding, value_weight):
    base = MemoryRetentionReward(embed=embedding, length_weight=0.1)
    with_value = MemoryRetentionReward(embed=embedding, length_weight=0.1, value_weight=value_weight)
    parts, r0 = with_value.components(inputs), base(inputs)
    r = parts["reward"]
    expected_v = torch.tensor([v for _, _, v in CASES] + [0.0, 0.0, 0.0])
    assert torch.equal(parts["value"], expected_v)
    n = len(CASES)
    assert torch.equal(r[n:], r0[n:])  # rows without a value: today's reward, bit for bit
    # rows with a value, in float64: scale * (norm * r0 / scale + w_v * V) / (norm + w_v)
    norm, s = 1.0 + 1.0 + 0.1, with_value.scale
    ref = s * (norm * r0[:n].double() / s + value_weight * expected_v[:n].double()) / (norm + value_weight)
    torch.testing.assert_close(r[:n].double(), ref, atol=1e-5, rtol=0)
    assert (r >= 0).all() and (r <= s).all()
    hit, miss = expected_v[:n] == 1, expected_v[:n] == 0
    assert (r[:n][hit] > r0[:n][hit]).all() and (r[:n][miss] < r0[:n][miss]).all()


def test_a_perfect_answer_with_its_value_scores_scale(embedding):
    ids, lens = torch.randint(10, VOCAB, (2, 8)), torch.tensor([8, 6])
    inp = RewardInput(ids, lens, ids, lens, ids, lens, generated_texts=["It is Velmor.", "It is Tosh."],
                      fact_values=["velmor", "Velmor"])
    r = MemoryRetentionReward(embed=embedding, value_weight=3.0)(inp)
    torch.testing.assert_close(r[0], torch.tensor(10.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(r[1], torch.tensor(10.0 * 2.1 / 5.1), atol=1e-4, rtol=0)  # V = 0 weighs 3 of 5.1


def test_value_weight_validation(inputs, embedding):
    with pytest.raises(ValueError, match="value_weight=-1.0 must be >= 0"):
        MemoryRetentionReward(value_weight=-1.0)
    with pytest.raises(ValueError, match="value_weight"):
        MemoryRetentionReward(value_weight=float("nan"))
    with pytest.raises(ConfigError, match="value_weight=-0.5 must be >= 0"):
        MRLConfig(reward={"value_weight": -0.5})
    assert MRLConfig(reward={"cosine_weight": 0.0, "value_weight": 2.0}).reward_fn().value_weight == 2.0
    ids, lens = inputs.generated_ids, inputs.generated_lengths
    with pytest.raises(ValueError, match="the value term needs fact_values"):
        MemoryRetentionReward(embed=embedding, value_weight=1.0)(RewardInput(ids, lens, ids, lens))
    with pytest.raises(ValueError, match="fact_values given without generated_texts"):
        RewardInput(ids, lens, fact_values=[None] * B)
    with pytest.raises(ValueError, match="generated_texts has 2 rows"):
        RewardInput(ids, lens, generated_texts=["a", "b"])
