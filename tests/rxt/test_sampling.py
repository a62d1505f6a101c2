"""The batched per-row sampler (`choose_rows_on_device`) against the earlier per-row sampler, kept here as the
reference: `filter_logits` + `torch.multinomial` on one row at a time with a private generator.

Token equality with the reference cannot hold (a different noise source), so the checks are exactness of the
support (top-k / top-p), the distribution (chi-square over many draws on a fixed toy distribution, against the
exact probabilities and against the reference's own draws), independence from batch companions, and the noise
stream itself (SplitMix64's published outputs)."""

import itertools
import math

import pytest
import torch

from rxt.sampling import (
    SamplingConfig,
    choose_rows_on_device,
    choose_tokens,
    filter_logits,
    filter_rows,
    sample_rows,
)
from rxt.sampling_noise import SampleStream, mix64


def _reference_pick(logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator) -> int:
    """The per-row sampler this module replaced (one row, its own generator)."""
    filtered = filter_logits(logits[None].float() / cfg.temperature, cfg.top_k, cfg.top_p)
    return int(torch.multinomial(filtered.softmax(dim=-1), 1, generator=generator))


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())


# chi-square critical values at p = 0.001 by degrees of freedom (the draws are seeded: the test is deterministic)
CRITICAL_001 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47, 5: 20.52, 7: 24.32}


def test_splitmix64_stream_matches_the_published_sequence():
    # SplitMix64 seeded with 0 (Steele, Lea & Flood 2014; Vigna's reference C code): its first three outputs
    stream = SampleStream(0)
    expected = [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert [stream.next_uniform() for _ in range(3)] == [(v >> 11) * 2.0**-53 for v in expected]
    assert stream.step == 3
    assert SampleStream(0).uniform(2) == (expected[2] >> 11) * 2.0**-53  # random access = sequential
    assert mix64(0) == 0 and mix64(1 << 64) == 0  # the finaliser works modulo 2^64


def test_seeded_streams_depend_on_seed_and_row_only():
    a = SampleStream.seeded(7, 0)
    assert a.key == SampleStream.seeded(7 + (1 << 64), 0).key  # the seed is taken modulo 2^64 (-2^63..2^64-1)
    assert SampleStream.seeded(-1, 0).key == SampleStream.seeded((1 << 64) - 1, 0).key
    keys = {SampleStream.seeded(s, r).key for s in range(20) for r in range(5)}
    assert len(keys) == 100
    cfg = SamplingConfig(temperature=1.0, seed=7)
    assert [s.key for s in cfg.streams(3)] == [SampleStream.seeded(7, r).key for r in range(3)]
    assert SamplingConfig().streams(3) is None  # greedy: no noise
    torch.manual_seed(0)
    first = [s.key for s in SamplingConfig(temperature=1.0).streams(2)]
    torch.manual_seed(0)
    assert [s.key for s in SamplingConfig(temperature=1.0).streams(2)] == first  # unseeded: the global RNG's
    assert first[0] != first[1]


@pytest.mark.parametrize("top_k,top_p", [(0, 1.0), (1, 1.0), (5, 1.0), (0, 0.3), (0, 0.9), (7, 0.8), (50, 0.5),
                                         (64, 1.0), (100, 0.99), (3, 1e-6)])
def test_filter_rows_keeps_exactly_the_support_of_filter_logits(top_k, top_p):
    torch.manual_seed(1)
    logits = torch.randn(6, 64) * 3  # continuous values: no ties, so the support is unique
    n = logits.shape[0]
    expected = filter_logits(logits, top_k, top_p)
    got = filter_rows(logits, torch.full((n,), top_k), torch.full((n,), top_p, dtype=torch.float64))
    assert torch.equal(got, expected)


def test_filter_rows_takes_each_rows_own_settings():
    torch.manual_seed(2)
    logits = torch.randn(5, 40) * 2
    settings = [(0, 1.0), (3, 1.0), (0, 0.5), (10, 0.7), (1, 0.2)]
    got = filter_rows(logits, torch.tensor([k for k, _ in settings]),
                      torch.tensor([p for _, p in settings], dtype=torch.float64))
    for i, (k, p) in enumerate(settings):
        assert torch.equal(got[i], filter_logits(logits[i : i + 1], k, p)[0]), i


def test_inverse_cdf_edges_pick_only_kept_tokens():
    logits = torch.tensor([[0.0, 5.0, -1.0, 4.0, 3.0, -9.0]] * 4)
    ones = torch.ones(4, dtype=torch.float64)
    top_k = torch.full((4,), 2)
    u = torch.tensor([0.0, 1e-300, 0.5, 1.0 - 2.0**-53], dtype=torch.float64)
    got = sample_rows(logits, ones, top_k, ones, u).tolist()
    # kept: tokens 1 and 3 (top-2); u = 0 picks the first kept token in vocabulary order, u -> 1 the last
    assert got[0] == 1 and got[1] == 1 and got[3] == 3
    assert set(got) <= {1, 3}
    # float32 throughout (the MPS path, which has no float64): the same support and the same edges
    narrow = sample_rows(logits, ones.float(), top_k, ones.float(), u.float()).tolist()
    assert narrow[0] == 1 and narrow[3] == 3 and set(narrow) <= {1, 3}


def test_sampled_tokens_follow_the_filtered_distribution():
    """Many rows of one toy distribution, each with its own seeded stream: frequencies match
    softmax(filter(logits / T)) exactly in support and by a chi-square test, and match the reference sampler's."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, -6.0])
    draws = 40_000
    for cfg in [SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.7, top_k=4),
                SamplingConfig(temperature=1.3, top_p=0.8), SamplingConfig(temperature=1.0, top_k=6, top_p=0.95)]:
        probs = filter_logits(logits[None] / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)[0].double()
        support = probs > 0
        rows = [(cfg, SampleStream.seeded(seed)) for seed in range(draws)]
        tokens, _ = choose_rows_on_device(logits.expand(draws, -1).contiguous(), rows)
        counts = torch.bincount(tokens, minlength=8).double()
        assert bool((counts[~support] == 0).all()), cfg  # never outside the top-k / nucleus
        dof = int(support.sum()) - 1
        assert _chi_square(counts, probs) < CRITICAL_001[dof], (cfg, counts.tolist(), probs.tolist())
        # the reference sampler, same number of draws: a two-sample chi-square (homogeneity) test
        generator = torch.Generator().manual_seed(5)
        ref = torch.bincount(torch.tensor([_reference_pick(logits, cfg, generator) for _ in range(draws // 4)]),
                             minlength=8).double()
        assert bool((ref[~support] == 0).all())
        pooled = (counts + ref) / (counts.sum() + ref.sum())
        stat = _chi_square(counts, pooled) + _chi_square(ref, pooled)
        assert stat < CRITICAL_001[dof], (cfg, counts.tolist(), ref.tolist())


def test_successive_tokens_of_a_stream_are_independent():
    """Pairs (token t, token t + 1) of one stream: the joint frequencies are the product of the marginals."""
    logits = torch.tensor([[0.0, 0.0, 0.0]])
    cfg = SamplingConfig(temperature=1.0)
    stream = SampleStream.seeded(123)
    seq = [int(choose_rows_on_device(logits, [(cfg, stream)])[0]) for _ in range(9_001)]
    pairs = torch.zeros(3, 3)
    for a, b in itertools.pairwise(seq):
        pairs[a, b] += 1
    assert _chi_square(pairs.flatten().double(), torch.full((9,), 1 / 9, dtype=torch.float64)) < 26.12  # dof 8


def test_a_seeded_row_draws_the_same_tokens_whatever_shares_the_batch():
    torch.manual_seed(3)
    vocab, steps = 50, 12
    logits = torch.randn(steps, 4, vocab) * 2
    mine = SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, seed=42, return_log_probs=True)
    alone_stream = SampleStream.seeded(42)
    alone = [int(choose_rows_on_device(logits[t, :1], [(mine, alone_stream)])[0]) for t in range(steps)]
    for order in ([0, 1, 2, 3], [3, 0, 2, 1], [2, 3, 1, 0]):  # batch position -> row; row 0 is ours, row 1 greedy
        rows_all = [(mine, SampleStream.seeded(42)), (SamplingConfig(), None),
                    (SamplingConfig(temperature=1.5, seed=1), SampleStream.seeded(1)),
                    (SamplingConfig(temperature=0.5, top_p=0.3), SampleStream.seeded(99))]
        rows = [rows_all[j] for j in order]
        at, greedy_at = order.index(0), order.index(1)
        got = []
        for t in range(steps):
            batch = logits[t, order]
            tokens, log_probs = choose_rows_on_device(batch, rows)
            got.append(int(tokens[at]))
            assert int(tokens[greedy_at]) == int(batch[greedy_at].argmax())  # greedy rows: the argmax
            torch.testing.assert_close(log_probs, batch.log_softmax(-1).gather(-1, tokens[:, None])[:, 0])
        assert got == alone, order


def test_choose_tokens_is_the_batch_of_one_config():
    torch.manual_seed(4)
    logits = torch.randn(3, 30)
    cfg = SamplingConfig(temperature=1.1, top_k=10, seed=8)
    tokens, log_probs = choose_tokens(logits, cfg, cfg.streams(3))
    rows = [(cfg, s) for s in cfg.streams(3)]
    assert torch.equal(tokens, choose_rows_on_device(logits, rows)[0])
    assert log_probs is None
    greedy, _ = choose_tokens(logits, SamplingConfig())
    assert torch.equal(greedy, logits.argmax(-1))


def test_a_sampled_row_without_a_stream_is_a_clear_error():
    logits = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="row 1 samples"):
        choose_rows_on_device(logits, [(SamplingConfig(), None), (SamplingConfig(temperature=1.0), None)])
    with pytest.raises(ValueError, match="2 sampled rows need as many SampleStreams, got 1"):
        choose_tokens(logits, SamplingConfig(temperature=1.0), [SampleStream(0)])
    with pytest.raises(ValueError, match="2 logit rows for 1 sampling rows"):
        choose_rows_on_device(logits, [(SamplingConfig(), None)])


def test_huge_top_k_means_no_filter():
    logits = torch.randn(1, 16)
    cfg = SamplingConfig(temperature=1.0, top_k=10**30, seed=0)
    base = SamplingConfig(temperature=1.0, seed=0)
    assert int(choose_rows_on_device(logits, [(cfg, SampleStream.seeded(0))])[0]) == \
        int(choose_rows_on_device(logits, [(base, SampleStream.seeded(0))])[0])
    assert math.isfinite(float(filter_rows(logits, torch.tensor([16]), torch.tensor([1.0]))[0].min()))
