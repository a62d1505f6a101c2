"""Incremental decoding (prefill + one-token steps on the KV cache) against the full forward pass."""

import pytest
import torch

from rxt.classic import DecoderLM
from rxt.config import RxTConfig, TransformerConfig
from rxt.model import RxT


def _rxt(**overrides) -> RxT:
    torch.manual_seed(0)
    model = RxT(RxTConfig.preset("tiny", **overrides)).eval()
    # Non-trivial memory so the STM K/V path matters.
    with torch.no_grad():
        model.stm.initial.normal_()
    return model


@pytest.mark.parametrize("position_encoding", ["rope", "absolute", "relative"])
def test_incremental_logits_match_full_forward_for_right_padded_batch(position_encoding):
    model = _rxt(position_encoding=position_encoding)
    lengths = [9, 5, 2]
    extra = 4
    full_seqs = [torch.randint(4, 128, (n + extra,)) for n in lengths]
    batch, t = len(lengths), max(lengths)
    prompt = torch.zeros(batch, t, dtype=torch.long)
    for b, n in enumerate(lengths):
        prompt[b, :n] = full_seqs[b][:n]
    valid = torch.arange(t)[None] < torch.tensor(lengths)[:, None]
    stm = model.initial_memory(batch)
    memory = model.project_memory(stm)  # projected once, reused by every step
    cache = model.decoder.new_cache(batch, t + extra)
    with torch.no_grad():
        out = model.decoder(prompt, attention_mask=valid, memory=memory, cache=cache)
        step_logits = [out.logits[torch.arange(batch), torch.tensor(lengths) - 1]]
        for i in range(extra):
            tokens = torch.stack([full_seqs[b][n + i] for b, n in enumerate(lengths)])
            step_logits.append(model.decoder(tokens[:, None], memory=memory, cache=cache).logits[:, 0])
        for b, n in enumerate(lengths):
            reference = model(full_seqs[b][None], stm[:, b : b + 1]).logits[0]
            for i, logits in enumerate(step_logits):
                torch.testing.assert_close(logits[b], reference[n - 1 + i], atol=1e-5, rtol=0)


def test_stm_changes_decoder_output():
    model = _rxt()
    ids = torch.randint(4, 128, (1, 6))
    with torch.no_grad():
        a = model(ids, model.initial_memory(1)).logits
        b = model(ids, torch.randn_like(model.initial_memory(1))).logits
    assert (a - b).abs().max() > 1e-3


def test_padding_invariance_and_fully_padded_row():
    model = _rxt()
    ids = torch.randint(4, 128, (3, 8))
    mask = torch.ones(3, 8, dtype=torch.bool)
    mask[1, 5:] = False
    mask[2, :] = False  # fully padded row
    stm = model.initial_memory(3)
    with torch.no_grad():
        padded = model(ids, stm, attention_mask=mask).logits
        alone = model(ids[1:2, :5], stm[:, 1:2]).logits
        encoded = model.encode(ids, mask)
        encoded_alone = model.encode(ids[1:2, :5])
        new_stm = model.update_memory(stm, ids, mask)
    torch.testing.assert_close(padded[1, :5], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(encoded[:, 1, :5], encoded_alone[:, 0], atol=1e-5, rtol=0)
    assert torch.isfinite(padded).all() and torch.isfinite(encoded).all() and torch.isfinite(new_stm).all()
    torch.testing.assert_close(new_stm[:, 2], stm[:, 2])  # nothing to encode: memory kept


def test_classic_decoder_incremental_matches_full():
    torch.manual_seed(1)
    model = DecoderLM(TransformerConfig.preset("tiny")).eval()
    seq = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        full = model(seq).logits
        cache = model.decoder.new_cache(2, 12)
        first = model(seq[:, :7], cache=cache).logits
        steps = [model(seq[:, i : i + 1], cache=cache).logits[:, 0] for i in range(7, 12)]
    torch.testing.assert_close(first, full[:, :7], atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 7:], atol=1e-5, rtol=0)


def test_moe_decoder_decodes_incrementally():
    model = _rxt(num_experts=4, top_k=2)
    seq = torch.randint(4, 128, (2, 10))
    stm = model.initial_memory(2)
    memory = model.project_memory(stm)
    with torch.no_grad():
        full = model(seq, stm).logits
        cache = model.decoder.new_cache(2, 10)
        model.decoder(seq[:, :6], memory=memory, cache=cache)
        steps = [model.decoder(seq[:, i : i + 1], memory=memory, cache=cache).logits[:, 0] for i in range(6, 10)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 6:], atol=1e-5, rtol=0)
