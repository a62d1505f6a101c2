import pytest
import torch
from torch import nn

from training.rewards import (
    CosineReward,
    LengthReward,
    MemoryRetentionReward,
    Reward,
    RewardInput,
    SentenceEmbeddingUnavailable,
    mean_pool,
    model_embedding,
    sentence_transformer_embedder,
    text_embedding,
)

VOCAB = 200


@pytest.fixture
def embedding():
    torch.manual_seed(0)
    return nn.Embedding(VOCAB, 32)


def _batch(seed, batch=16, length=24, lo=10, hi=VOCAB):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(lo, hi, (batch, length), generator=g)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    return ids, lengths


def test_reward_input_validation():
    ids, lens = _batch(0)
    inp = RewardInput(ids, lens)
    assert inp.batch_size == 16
    with pytest.raises(ValueError, match="reference_ids"):
        inp.target("reference")
    with pytest.raises(ValueError, match="saved_lengths"):
        RewardInput(ids, lens, saved_ids=ids)
    with pytest.raises(ValueError, match="batch"):
        RewardInput(ids, lens, reference_ids=ids[:3], reference_lengths=lens[:3])


def test_rewards_are_plain_callables(embedding):
    assert isinstance(LengthReward(), Reward)
    assert isinstance(CosineReward(embedding), Reward)
    assert isinstance(MemoryRetentionReward(), Reward)
    assert isinstance(lambda inputs: inputs.generated_lengths.float(), Reward)
    assert not isinstance(LengthReward(), nn.Module)


def test_mean_pool_ignores_padding():
    hidden = torch.arange(12, dtype=torch.float32).view(1, 4, 3).repeat(2, 1, 1)
    pooled = mean_pool(hidden, torch.tensor([2, 0]))
    assert pooled[0].tolist() == [1.5, 2.5, 3.5]
    assert pooled[1].tolist() == [0.0, 0.0, 0.0]


def test_cosine_identical_is_one_and_padding_ignored(embedding):
    ids, lens = _batch(1)
    other = ids.clone()
    pos = torch.arange(ids.size(1))
    other[pos[None] >= lens[:, None]] = 3  # different padding content
    inp = RewardInput(ids, lens, reference_ids=other, reference_lengths=lens)
    sim = CosineReward(embedding)(inp)
    assert sim.shape == (16,)
    torch.testing.assert_close(sim, torch.ones(16), atol=1e-5, rtol=0)
    # the embedding from RewardInput.embed is the default; random answers are less similar
    rand_ids, rand_lens = _batch(2)
    inp2 = RewardInput(
        rand_ids, rand_lens, reference_ids=ids, reference_lengths=lens, embed=model_embedding(embedding)
    )
    sim2 = CosineReward()(inp2)
    assert (sim2 < 0.99).all() and (sim2 >= -1).all()
    assert (CosineReward(clamp_negative=True)(inp2) >= 0).all()
    with pytest.raises(ValueError, match="embedding"):
        CosineReward()(RewardInput(ids, lens, reference_ids=ids, reference_lengths=lens))


def test_cosine_against_saved(embedding):
    ids, lens = _batch(3)
    ref, ref_lens = _batch(4)
    inp = RewardInput(
        ids, lens, reference_ids=ref, reference_lengths=ref_lens, saved_ids=ids, saved_lengths=lens
    )
    torch.testing.assert_close(
        CosineReward(embedding, target="saved")(inp), torch.ones(16), atol=1e-5, rtol=0
    )


def test_length_reward_bounds_and_formula():
    ref = torch.zeros(6, 10, dtype=torch.long)
    ref_lens = torch.tensor([10, 10, 10, 10, 0, 4])
    gen_lens = torch.tensor([10, 5, 20, 0, 0, 8])
    gen = torch.zeros(6, 20, dtype=torch.long)
    r = LengthReward()(RewardInput(gen, gen_lens, reference_ids=ref, reference_lengths=ref_lens))
    assert r.tolist() == pytest.approx([1.0, 0.5, 0.5, 0.0, 1.0, 0.5])
    r2 = LengthReward(target_ratio=2.0)(
        RewardInput(gen, gen_lens, reference_ids=ref, reference_lengths=ref_lens)
    )
    assert r2[2].item() == pytest.approx(1.0) and r2[5].item() == pytest.approx(1.0)
    g = torch.Generator().manual_seed(0)
    many = LengthReward(target_ratio=0.7, power=2.0)(
        RewardInput(
            torch.zeros(500, 1, dtype=torch.long),
            torch.randint(0, 300, (500,), generator=g),
            reference_ids=torch.zeros(500, 1, dtype=torch.long),
            reference_lengths=torch.randint(0, 300, (500,), generator=g),
        )
    )
    assert (many >= 0).all() and (many <= 1).all()
    with pytest.raises(ValueError):
        LengthReward(target_ratio=0)


def _episode(seed=10):
    gen, gen_lens = _batch(seed)
    ref, ref_lens = _batch(seed + 1)
    saved, saved_lens = _batch(seed + 2)
    return gen, gen_lens, ref, ref_lens, saved, saved_lens


@pytest.mark.parametrize("mode", ["standard", "negative", "long_range"])
def test_composite_range(mode, embedding):
    gen, gen_lens, ref, ref_lens, saved, saved_lens = _episode()
    reward = MemoryRetentionReward(mode=mode, embed=embedding)
    for g, gl in ((gen, gen_lens), (ref, ref_lens), (saved, saved_lens)):
        inp = RewardInput(g, gl, ref, ref_lens, saved, saved_lens, first_ids=saved, first_lengths=saved_lens)
        parts = reward.components(inp)
        r = reward(inp)
        assert r.shape == (16,) and r.dtype == torch.float32
        assert (r >= 0).all() and (r <= 10.0 + 1e-5).all()
        for name, value in parts.items():
            if name != "reward":
                assert (value >= 0).all() and (value <= 1 + 1e-6).all(), name


def test_composite_perfect_answer_scores_scale(embedding):
    gen, gen_lens, *_ = _episode()
    inp = RewardInput(gen, gen_lens, gen, gen_lens, gen, gen_lens)
    torch.testing.assert_close(
        MemoryRetentionReward(embed=embedding, scale=10.0)(inp), torch.full((16,), 10.0), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        MemoryRetentionReward(embed=embedding, scale=1.0)(inp), torch.full((16,), 1.0), atol=1e-5, rtol=0
    )


def test_identical_answer_beats_random_in_standard_and_loses_in_negative(embedding):
    _, _, ref, ref_lens, saved, saved_lens = _episode(20)
    rand, rand_lens = _batch(99)
    # the answer repeats the saved interaction (the data the question is about)
    repeat = RewardInput(saved, saved_lens, ref, ref_lens, saved, saved_lens)
    random = RewardInput(rand, rand_lens, ref, ref_lens, saved, saved_lens)
    standard = MemoryRetentionReward(embed=embedding)
    assert (standard(repeat) > standard(random)).all()
    negative = MemoryRetentionReward(mode="negative", embed=embedding)
    assert (negative(repeat) < negative(random)).all()
    # identical to the reference answer beats random in standard mode too
    answer = RewardInput(ref, ref_lens, ref, ref_lens, saved, saved_lens)
    assert (standard(answer) > standard(random)).all()


def test_long_range_uses_first_interaction(embedding):
    _, _, ref, ref_lens, saved, saved_lens = _episode(30)
    first, first_lens = _batch(77)
    inp = RewardInput(
        first, first_lens, ref, ref_lens, saved, saved_lens, first_ids=first, first_lengths=first_lens
    )
    long_range = MemoryRetentionReward(mode="long_range", embed=embedding)
    standard = MemoryRetentionReward(mode="standard", embed=embedding)
    assert (long_range(inp) > standard(inp)).all()
    parts = long_range.components(inp)
    torch.testing.assert_close(parts["bleu_saved"], torch.ones(16), atol=1e-6, rtol=0)
    # without first_ids it falls back to the saved data, i.e. equals standard
    no_first = RewardInput(first, first_lens, ref, ref_lens, saved, saved_lens)
    torch.testing.assert_close(long_range(no_first), standard(no_first))


def test_composite_weights_and_missing_data(embedding):
    gen, gen_lens, ref, ref_lens, saved, saved_lens = _episode(40)
    bleu_only = MemoryRetentionReward(cosine_weight=0.0, length_weight=0.0, ref_weight=1.0, saved_weight=0.0)
    inp = RewardInput(ref, ref_lens, ref, ref_lens)  # no saved data, no embedding: neither is needed
    torch.testing.assert_close(bleu_only(inp), torch.full((16,), 10.0))
    with pytest.raises(ValueError, match="embedding"):
        MemoryRetentionReward()(RewardInput(gen, gen_lens, ref, ref_lens))
    with pytest.raises(ValueError, match="reference_ids"):
        MemoryRetentionReward(embed=embedding)(
            RewardInput(gen, gen_lens, saved_ids=saved, saved_lengths=saved_lens)
        )
    with pytest.raises(ValueError):
        MemoryRetentionReward(mode="sideways")
    with pytest.raises(ValueError):
        MemoryRetentionReward(bleu_weight=-1)


def test_sentence_transformer_embedder_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    try:
        embed_texts = sentence_transformer_embedder("cpu")
    except SentenceEmbeddingUnavailable as exc:
        pytest.skip(f"optional extra 'embeddings' not installed: {exc}")
    emb = embed_texts(["the cat sat on the mat", "the cat sat on the mat", "quarterly tax filing deadlines"])
    assert emb.shape == (3, 384)
    sims = emb @ emb.T
    assert sims[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert sims[0, 2].item() < 0.5
    words = {1: "the", 2: "cat", 3: "sat", 4: "dog", 5: "ran"}
    embed = text_embedding(embed_texts, lambda ids: " ".join(words[i] for i in ids))
    ids = torch.tensor([[1, 2, 3, 0], [1, 4, 5, 0]])
    lens = torch.tensor([3, 3])
    inp = RewardInput(ids, lens, reference_ids=ids, reference_lengths=lens)
    torch.testing.assert_close(CosineReward(embed)(inp), torch.ones(2), atol=1e-5, rtol=0)
