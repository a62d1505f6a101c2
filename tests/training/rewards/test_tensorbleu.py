import math
import warnings

import pytest
import torch

from training.rewards.tensorbleu import (
    lengths_from_padding,
    ngram_statistics,
    tensor_corpus_bleu,
    tensor_sentence_bleu,
)

bleu_score = pytest.importorskip("nltk.translate.bleu_score")

_SF = bleu_score.SmoothingFunction()
NLTK_SMOOTHING = {"none": _SF.method0, "floor": _SF.method1, "add-k": _SF.method2, "exp": _SF.method3}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _words(ids: torch.Tensor, n: int) -> list[str]:
    return [str(t) for t in ids[:n].tolist()]


def _nltk_sentence(cand, cand_len, refs, ref_lens, smoothing, weights=(0.25, 0.25, 0.25, 0.25)):
    """refs: (B, R, T), ref_lens: (B, R)."""
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # method0 warns on zero n-gram matches
        for b in range(cand.size(0)):
            references = [_words(refs[b, r], int(ref_lens[b, r])) for r in range(refs.size(1))]
            out.append(
                bleu_score.sentence_bleu(
                    references,
                    _words(cand[b], int(cand_len[b])),
                    weights=weights,
                    smoothing_function=NLTK_SMOOTHING[smoothing],
                )
            )
    return torch.tensor(out, dtype=torch.float64)


def _random_batch(seed, batch=200, max_len=64, n_refs=1, vocab=8):
    g = torch.Generator().manual_seed(seed)
    cand = torch.randint(0, vocab, (batch, max_len), generator=g)
    refs = torch.randint(0, vocab, (batch, n_refs, max_len), generator=g)
    cand_len = torch.randint(1, max_len + 1, (batch,), generator=g)
    ref_lens = torch.randint(1, max_len + 1, (batch, n_refs), generator=g)
    # Some candidates share a long stretch with their reference, so higher-order matches occur.
    copy = torch.rand(batch, generator=g) < 0.3
    cand[copy] = refs[copy, 0]
    return cand, cand_len, refs, ref_lens


@pytest.mark.parametrize("smoothing", ["none", "floor", "add-k", "exp"])
@pytest.mark.parametrize("vocab", [4, 50])
def test_equals_nltk_sentence_bleu_on_200_random_pairs(smoothing, vocab):
    cand, cand_len, refs, ref_lens = _random_batch(seed=vocab, vocab=vocab)
    expected = _nltk_sentence(cand, cand_len, refs, ref_lens, smoothing)
    got = tensor_sentence_bleu(
        cand, refs[:, 0], cand_len, ref_lens[:, 0], smoothing=smoothing, dtype=torch.float64
    )
    assert got.shape == (200,)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # float32 default path agrees too
    got32 = tensor_sentence_bleu(cand, refs[:, 0], cand_len, ref_lens[:, 0], smoothing=smoothing)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), expected, atol=1e-6, rtol=0)
    if smoothing != "none":
        assert (expected > 0).any() and (expected < 1).any()


@pytest.mark.parametrize("smoothing", ["none", "floor", "add-k", "exp"])
def test_multiple_references(smoothing):
    cand, cand_len, refs, ref_lens = _random_batch(seed=7, batch=100, n_refs=3, vocab=6)
    expected = _nltk_sentence(cand, cand_len, refs, ref_lens, smoothing)
    got = tensor_sentence_bleu(cand, refs, cand_len, ref_lens, smoothing=smoothing, dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # list-of-tensors form, with different widths per reference
    refs_list = [refs[:, 0, :40], refs[:, 1], refs[:, 2, :50]]
    lens_list = [ref_lens[:, 0].clamp(max=40), ref_lens[:, 1], ref_lens[:, 2].clamp(max=50)]
    trimmed = torch.stack([torch.nn.functional.pad(r, (0, 64 - r.size(1))) for r in refs_list], dim=1)
    expected_list = _nltk_sentence(cand, cand_len, trimmed, torch.stack(lens_list, 1), smoothing)
    got_list = tensor_sentence_bleu(
        cand, refs_list, cand_len, lens_list, smoothing=smoothing, dtype=torch.float64
    )
    torch.testing.assert_close(got_list, expected_list, atol=1e-6, rtol=0)


def test_brevity_penalty_uses_closest_reference_with_ties_to_shorter():
    cand = torch.tensor([[1, 2, 3, 4, 5, 6]])
    refs = torch.tensor([[[1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0, 0, 0, 0]]])
    ref_lens = torch.tensor([[8, 4]])  # both 2 away from 6: NLTK takes the shorter (4) -> BP = 1
    expected = _nltk_sentence(cand, torch.tensor([6]), refs, ref_lens, "none")
    got = tensor_sentence_bleu(cand, refs, None, ref_lens, dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert got.item() == pytest.approx(1.0)  # clipped by the max over refs, BP from the 4-token reference


@pytest.mark.parametrize("smoothing", ["none", "floor", "add-k", "exp"])
def test_short_candidates_and_empty_rows(smoothing):
    # candidates shorter than n, empty candidates, empty references, an all-pad batch row
    cand = torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0], [0, 0, 0, 0], [7, 8, 9, 0], [3, 3, 3, 3]])
    refs = torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0], [1, 2, 0, 0], [0, 0, 0, 0], [3, 3, 0, 0]])
    cand_len = torch.tensor([2, 1, 0, 3, 4])
    ref_len = torch.tensor([3, 2, 2, 0, 2])
    expected = _nltk_sentence(cand, cand_len, refs[:, None], ref_len[:, None], smoothing)
    got = tensor_sentence_bleu(cand, refs, cand_len, ref_len, smoothing=smoothing, dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert got[2] == 0 and got[3] == 0  # empty candidate, empty reference


def test_zero_matches_without_smoothing_is_zero_like_nltk():
    cand = torch.tensor([[1, 2, 3, 4, 5]])
    ref = torch.tensor([[1, 2, 9, 9, 9]])  # unigram and bigram matches, no 3-gram: NLTK gives ~1e-77
    expected = _nltk_sentence(cand, torch.tensor([5]), ref[:, None], torch.tensor([[5]]), "none")
    assert 0 < expected.item() < 1e-60
    assert tensor_sentence_bleu(cand, ref, dtype=torch.float64).item() == pytest.approx(
        expected.item(), abs=1e-70
    )
    no_overlap = tensor_sentence_bleu(torch.tensor([[1, 2]]), torch.tensor([[3, 4]]), smoothing="floor")
    assert no_overlap.item() == 0.0  # no unigram match -> 0 under every smoothing (NLTK returns 0)


def test_padding_content_is_ignored():
    cand, cand_len, refs, ref_lens = _random_batch(seed=3, batch=32, vocab=10)
    base = tensor_sentence_bleu(cand, refs, cand_len, ref_lens, smoothing="exp", dtype=torch.float64)
    noisy_c, noisy_r = cand.clone(), refs.clone()
    pos = torch.arange(64)
    noisy_c[pos[None] >= cand_len[:, None]] = 999
    noisy_r[pos[None, None] >= ref_lens[..., None]] = 12345
    again = tensor_sentence_bleu(noisy_c, noisy_r, cand_len, ref_lens, smoothing="exp", dtype=torch.float64)
    torch.testing.assert_close(base, again, atol=0, rtol=0)


def test_all_pad_batch_and_lengths_from_padding():
    ids = torch.zeros(3, 5, dtype=torch.long)
    lengths = lengths_from_padding(ids, pad_id=0)
    assert lengths.tolist() == [0, 0, 0]
    assert tensor_sentence_bleu(ids, ids, lengths, lengths).tolist() == [0.0, 0.0, 0.0]
    assert lengths_from_padding(torch.tensor([[4, 0, 5, 0, 0], [1, 1, 1, 1, 1]]), 0).tolist() == [3, 5]
    empty = tensor_sentence_bleu(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long))
    assert empty.shape == (0,)
    zero_width = torch.zeros(2, 0, dtype=torch.long)
    assert tensor_sentence_bleu(zero_width, zero_width).tolist() == [0.0, 0.0]
    assert tensor_sentence_bleu(torch.ones(2, 3, dtype=torch.long), zero_width, smoothing="exp").tolist() == [
        0.0,
        0.0,
    ]


@pytest.mark.parametrize("smoothing", ["none", "floor", "add-k", "exp"])
def test_corpus_bleu_equals_nltk(smoothing):
    cand, cand_len, refs, ref_lens = _random_batch(seed=11, batch=60, n_refs=2, vocab=12)
    hyps = [_words(cand[b], int(cand_len[b])) for b in range(60)]
    list_refs = [[_words(refs[b, r], int(ref_lens[b, r])) for r in range(2)] for b in range(60)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = bleu_score.corpus_bleu(list_refs, hyps, smoothing_function=NLTK_SMOOTHING[smoothing])
    got = tensor_corpus_bleu(cand, refs, cand_len, ref_lens, smoothing=smoothing, dtype=torch.float64)
    assert got.dim() == 0
    assert got.item() == pytest.approx(expected, abs=1e-9)


def test_custom_weights_and_max_n():
    cand, cand_len, refs, ref_lens = _random_batch(seed=5, batch=50, vocab=5)
    expected = _nltk_sentence(cand, cand_len, refs, ref_lens, "floor", weights=(0.5, 0.5))
    got = tensor_sentence_bleu(
        cand, refs, cand_len, ref_lens, weights=(0.5, 0.5), smoothing="floor", dtype=torch.float64
    )
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    assert torch.equal(
        got,
        tensor_sentence_bleu(cand, refs, cand_len, ref_lens, max_n=2, smoothing="floor", dtype=torch.float64),
    )
    with pytest.raises(ValueError):
        tensor_sentence_bleu(cand, refs, max_n=3, weights=(0.5, 0.5))
    with pytest.raises(ValueError):
        tensor_sentence_bleu(cand, refs, smoothing="method7")


def test_identical_is_one_and_statistics():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [9, 9, 9, 9, 9, 9]])
    assert tensor_sentence_bleu(ids, ids).tolist() == pytest.approx([1.0, 1.0])
    matches, totals, hyp_len, ref_len = ngram_statistics(ids, ids[:, :3], None, None, max_n=2)
    assert matches.tolist() == [[3, 2], [3, 2]]  # clipped by the reference counts
    assert totals.tolist() == [[6, 5], [6, 5]]
    assert hyp_len.tolist() == [6, 6] and ref_len.tolist() == [3, 3]


@pytest.mark.parametrize("device", DEVICES)
def test_device_agnostic(device):
    cand, cand_len, refs, ref_lens = _random_batch(seed=9, batch=40, vocab=7)
    cpu = tensor_sentence_bleu(cand, refs, cand_len, ref_lens, smoothing="exp", dtype=torch.float64)
    dev = tensor_sentence_bleu(
        cand.to(device),
        refs.to(device),
        cand_len.to(device),
        ref_lens.to(device),
        smoothing="exp",
        dtype=torch.float64,
    )
    assert dev.device.type == device
    torch.testing.assert_close(dev.cpu(), cpu, atol=1e-12, rtol=0)


def test_large_token_ids_and_int32_input():
    g = torch.Generator().manual_seed(1)
    cand = torch.randint(0, 2**31 - 1, (8, 20), generator=g, dtype=torch.int64)
    cand[:, 10:] = cand[:, :10]
    refs = cand.flip(1)
    expected = _nltk_sentence(cand, torch.full((8,), 20), refs[:, None], torch.full((8, 1), 20), "floor")
    got = tensor_sentence_bleu(cand, refs, smoothing="floor", dtype=torch.float64)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=0)
    small = torch.randint(0, 100, (4, 10), generator=g, dtype=torch.int32)
    assert tensor_sentence_bleu(small, small).tolist() == pytest.approx([1.0] * 4)
    assert not math.isnan(tensor_corpus_bleu(small, small).item())
