"""Packing (`training.data.packing`): a packed row computes, per document, what the document computes alone
(float64, 1e-10), for the joint/SFT structure (encoder MLM + decoder AR reading the encoder states); the
packer fills rows, and bad input names the source and the limit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rxt.config import RxTConfig
from rxt.model import RxT
from training.data.packing import PackingError, document_masks, mask_tokens, mlm_positions, pack_documents
from training.heads import MLMHead
from training.stages.joint_lm import JointLMModel

VOCAB = 64


def _docs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, VOCAB, (n,), generator=g).tolist() for n in lengths]


def test_rows_respect_the_limit_and_hold_every_token_once():
    lengths = [5, 17, 3, 30, 12, 9, 9, 2, 25, 31, 1, 14]
    docs = _docs(lengths)
    packed = pack_documents(docs, 32, source="test", max_len=64)
    assert packed.row_len == 32 and packed.real_tokens == sum(lengths) == int((packed.doc >= 0).sum())
    assert len(packed) == 6  # 158 tokens in rows of 32: first-fit decreasing reaches the bound (5 rows) + 1
    found = []
    for r in range(len(packed)):
        for k in range(int(packed.doc[r].max()) + 1):
            at = packed.doc[r] == k
            assert torch.equal(packed.positions[r][at], torch.arange(int(at.sum())))
            found.append(packed.input_ids[r][at].tolist())
            assert packed.labels[r][at][0] == -100  # a document's first token is never a target
    assert sorted(found) == sorted(docs)


def test_bad_input_names_the_source_and_the_limit():
    with pytest.raises(PackingError, match=r"src.*row length 128 exceeds max_len=64"):
        pack_documents(_docs([3]), 128, source="src", max_len=64)
    with pytest.raises(PackingError, match=r"src.*document 1 has 40 tokens, longer than a packed row of 32"):
        pack_documents(_docs([3, 40]), 32, source="src", max_len=64)
    with pytest.raises(PackingError, match=r"src.*no documents.*empty after filtering"):
        pack_documents([], 32, source="src", max_len=64)


def _model():
    torch.manual_seed(0)
    rxt = RxT(RxTConfig.preset("tiny", vocab_size=VOCAB, max_seq_len=64)).double()
    head = MLMHead(rxt.config.dim, VOCAB, tie_to=rxt.embedding).double()
    return JointLMModel(rxt, head).eval()


def _per_token_ce(logits, targets):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none",
                           ignore_index=-100).reshape(targets.shape)


def test_packed_rows_give_each_document_its_unpacked_losses():
    lengths = [7, 19, 4, 11, 23, 6, 2, 15]
    docs = _docs(lengths, seed=3)
    # answer-only style labels on some documents (SFT), all tokens on others (joint)
    labels = [d if i % 2 else [-100] * (len(d) // 2) + d[len(d) // 2:] for i, d in enumerate(docs)]
    packed = pack_documents(docs, 32, source="test", max_len=64, labels=labels, special_ids=(0, 1, 2))
    assert len(packed) < len(docs)
    g = torch.Generator().manual_seed(1)
    mlm_ids, mlm_labels = mask_tokens(packed.input_ids, packed.maskable, mask_prob=0.3, mask_id=4,
                                      random_ids=torch.arange(8, VOCAB), generator=g)
    model = _model()
    with torch.no_grad():
        logits, mlm_logits = model(packed.input_ids, packed.doc >= 0, mlm_ids, doc=packed.doc,
                                   positions=packed.positions)
    ar_targets = torch.cat([packed.labels[:, 1:], torch.full_like(packed.labels[:, :1], -100)], dim=1)
    ar_ce, mlm_ce = _per_token_ce(logits, ar_targets), _per_token_ce(mlm_logits, mlm_labels)
    checked = 0
    for r in range(len(packed)):
        for k in range(int(packed.doc[r].max()) + 1):
            at = (packed.doc[r] == k).nonzero().squeeze(1)
            ids = packed.input_ids[r, at][None]
            i = docs.index(ids[0].tolist())
            with torch.no_grad():
                alone, alone_mlm = model(ids, None, mlm_ids[r, at][None])
            want_ar = _per_token_ce(alone[:, :-1], torch.tensor([labels[i][1:]]))
            torch.testing.assert_close(ar_ce[r, at][:-1], want_ar[0], rtol=0, atol=1e-10)
            assert ar_ce[r, at[-1]] == 0  # the last token predicts nothing (the next document's start)
            want_mlm = _per_token_ce(alone_mlm, mlm_labels[r, at][None])
            torch.testing.assert_close(mlm_ce[r, at], want_mlm[0], rtol=0, atol=1e-10)
            checked += 1
    assert checked == len(docs)
    # the MLM head on gathered positions gives the same logits there (and every target is gathered)
    count = int((mlm_labels != -100).sum()) + 5
    index = mlm_positions(mlm_labels, count)
    with torch.no_grad():
        _, gathered = model(packed.input_ids, packed.doc >= 0, mlm_ids, doc=packed.doc, positions=packed.positions,
                            mlm_index=index)
    assert gathered.shape == (1, count, VOCAB)
    torch.testing.assert_close(gathered[0], mlm_logits.flatten(0, 1)[index], rtol=0, atol=1e-10)
    gathered_labels = mlm_labels.flatten()[index]
    assert int((gathered_labels != -100).sum()) == count - 5


def test_mlm_masks_are_the_same_for_any_world_size_and_the_cap_holds():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(8, VOCAB, (6, 20), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    kw = dict(mask_prob=0.3, mask_id=4, random_ids=torch.arange(8, VOCAB))
    full = mask_tokens(ids, maskable, generator=torch.Generator().manual_seed(5), **kw)
    for rank in (0, 1):
        part = mask_tokens(ids[rank * 3 : rank * 3 + 3], maskable[:3], generator=torch.Generator().manual_seed(5),
                           shard=(rank, 2), **kw)
        assert torch.equal(part[0], full[0][rank * 3 : rank * 3 + 3])
        assert torch.equal(part[1], full[1][rank * 3 : rank * 3 + 3])
    capped = mask_tokens(ids, maskable, generator=torch.Generator().manual_seed(5), max_selected=7, **kw)
    assert int((capped[1] != -100).sum()) == 7 < int((full[1] != -100).sum())


def test_document_masks_keep_documents_apart_and_never_leave_a_row_empty():
    doc = torch.tensor([[0, 0, 1, 1, 1, -1]])
    both, causal = document_masks(doc)
    assert both.shape == (1, 1, 6, 6)
    assert both[0, 0, 0].tolist() == [True, True, False, False, False, False]
    assert causal[0, 0, 3].tolist() == [False, False, True, True, False, False]
    assert both[0, 0, 5].tolist() == [False] * 5 + [True]  # a pad query sees only itself
    assert bool(causal[0, 0].any(dim=-1).all())
