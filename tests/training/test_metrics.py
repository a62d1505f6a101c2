"""Loss/accuracy helpers: shift conventions, and pads and query tokens never count (hand-made batch)."""

import math

import pytest
import torch

from rxt.tokenizer import RxTokenizer
from training.data.datasets import InteractionDataset, collate_lm
from training.data.records import InteractionRecord
from training.metrics import causal_lm_loss, masked_lm_loss, perplexity, token_accuracy, token_counts

# A hand-made interaction batch (V = 6). Row 0: [BOS][Q] q q [A] a a [EOS]; row 1: shorter, then 2 pads.
# labels hold the id only at answer positions (after [A], up to and including [EOS]); -100 at query/markers/pads.
IDS = torch.tensor([[0, 1, 3, 4, 2, 5, 3, 1], [0, 1, 4, 2, 5, 1, 0, 0]])
LABELS = torch.tensor([[-100, -100, -100, -100, -100, 5, 3, 1], [-100, -100, -100, -100, 5, 1, -100, -100]])
V = 6


def reference_ce(logits, targets):
    """float64 mean cross-entropy over the counted (target != -100) positions, by hand."""
    total, count = 0.0, 0
    lp = torch.log_softmax(logits.double(), dim=-1)
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            if targets[b, t] != -100:
                total -= float(lp[b, t, targets[b, t]])
                count += 1
    return total / count


def counted_positions(labels, shifted):
    """(b, t) of the logits that have a target."""
    target = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], 1) if shifted else labels
    return target != -100


@pytest.mark.parametrize("shifted", [True, False])
def test_pads_and_query_tokens_never_contribute(shifted):
    torch.manual_seed(0)
    logits = torch.randn(2, 8, V)
    loss_fn = causal_lm_loss if shifted else masked_lm_loss
    loss = loss_fn(logits, LABELS)
    acc = token_accuracy(logits, LABELS, shifted=shifted)
    counted = counted_positions(LABELS, shifted)
    wild = logits.clone()
    wild[~counted] = torch.randn(int((~counted).sum()), V) * 1e4  # query, markers, pads, last position
    wild[~counted, 0] = 1e6
    assert torch.equal(loss_fn(wild, LABELS), loss)
    assert token_accuracy(wild, LABELS, shifted=shifted) == acc
    assert token_counts(wild, LABELS, shifted=shifted) == token_counts(logits, LABELS, shifted=shifted)
    # ... while the counted positions do matter
    moved = logits.clone()
    moved[counted] += torch.randn(int(counted.sum()), V) * 3
    assert not torch.equal(loss_fn(moved, LABELS), loss)


def test_causal_loss_shifts_and_matches_float64_reference():
    torch.manual_seed(1)
    logits = torch.randn(2, 8, V)
    expected = reference_ce(logits[:, :-1], LABELS[:, 1:])
    assert causal_lm_loss(logits, LABELS).item() == pytest.approx(expected, rel=1e-5)
    # position t predicts labels[t + 1]: 4 + 2 answer targets
    assert token_counts(logits, LABELS, shifted=True)[1] == 5
    assert masked_lm_loss(logits, LABELS).item() == pytest.approx(reference_ce(logits, LABELS), rel=1e-5)


def test_accuracy_counts_exact_hits():
    logits = torch.full((2, 8, V), -5.0)
    # shifted: logits[b, t] should put mass on labels[b, t + 1]
    target = torch.cat([LABELS[:, 1:], torch.full_like(LABELS[:, :1], -100)], 1)
    hits = 0
    for b in range(2):
        for t in range(8):
            if target[b, t] != -100:
                right = (b + t) % 2 == 0
                logits[b, t, target[b, t] if right else (target[b, t] + 1) % V] = 5.0
                hits += right
    correct, counted = token_counts(logits, LABELS, shifted=True)
    assert (correct, counted) == (hits, 5)
    assert token_accuracy(logits, LABELS, shifted=True) == pytest.approx(hits / 5)


def test_no_targets_gives_zero_loss_with_graph():
    logits = torch.randn(1, 4, V, requires_grad=True)
    labels = torch.full((1, 4), -100)
    loss = causal_lm_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0
    assert token_accuracy(logits, labels, shifted=True) == 0.0


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(torch.tensor(math.log(7.0))) == pytest.approx(7.0)
    assert perplexity(1e5) == math.inf


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="logits must be"):
        causal_lm_loss(torch.randn(2, 5, V), LABELS)


def test_answer_metrics_on_real_interaction_batch_ignore_query_and_pads():
    tok = RxTokenizer.default()
    ds = InteractionDataset([InteractionRecord("what is my cat called?", "Miso."),
                             InteractionRecord("hi", "hello there, friend")], tok, max_len=32)
    batch = collate_lm([ds[0], ds[1]], tok.pad_id)
    labels = batch["labels"]
    ids = batch["input_ids"]
    # every counted label is an answer token: after [A], never a pad, never the query
    for b in range(2):
        a_pos = int((ids[b] == tok.answer_id).nonzero()[0])
        counted = (labels[b] != -100).nonzero().flatten()
        assert counted.min() > a_pos
        assert bool(batch["attention_mask"][b, counted].all())
    torch.manual_seed(2)
    logits = torch.randn(*ids.shape, tok.vocab_size)
    base = (causal_lm_loss(logits, labels), token_accuracy(logits, labels, shifted=True))
    wild = logits.clone()
    wild[~counted_positions(labels, True)] *= 1000
    assert torch.equal(causal_lm_loss(wild, labels), base[0])
    assert token_accuracy(wild, labels, shifted=True) == base[1]
