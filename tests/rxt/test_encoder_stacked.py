"""Encoders of one configuration run as one stacked pass (`rxt.encoder_stacked`) equal the separate passes, float64."""

from __future__ import annotations

import copy

import pytest
import torch

from rxt.config import TransformerConfig
from rxt.encoder import Encoder
from rxt.encoder_stacked import encoders_stackable, right_pad_stack, stacked_encode

V, B = 50, 3


def _pair(**cfg) -> list[Encoder]:
    torch.manual_seed(0)
    config = TransformerConfig(**{"vocab_size": V, "dim": 16, "num_layers": 3, "num_heads": 4, "max_seq_len": 32,
                                  "ffn_hidden_dim": 24, **cfg})
    first = Encoder(config).double().eval()
    second = copy.deepcopy(first)
    with torch.no_grad():  # every encoder its own weights: a wrong pairing of weights and rows shows
        g = torch.Generator().manual_seed(1)
        for p in [*first.parameters(), *second.parameters()]:
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return [first, second]


def _inputs():
    g = torch.Generator().manual_seed(2)
    short = torch.randint(1, V, (B, 6), generator=g)
    short_mask = torch.ones(B, 6, dtype=torch.bool)
    short_mask[1, 3:] = False  # padding
    short_mask[2] = False  # a row with no token
    long = torch.randint(1, V, (B, 10), generator=g)
    long_mask = torch.ones(B, 10, dtype=torch.bool)
    long_mask[0, 7:] = False
    return [(short, short_mask), (long, long_mask)]


@pytest.mark.parametrize("cfg", [{}, {"position_encoding": "absolute"}, {"ffn_gated": False},
                                 {"self_attention": "mha"}, {"position_encoding": "none"}])
def test_stacked_pass_equals_the_separate_encoders_and_their_gradients(cfg):
    encoders = _pair(**cfg)
    inputs = _inputs()
    assert encoders_stackable(encoders)
    ids, mask = right_pad_stack(inputs, pad_id=0)
    assert ids.shape == (2, B, 10) and not mask[0, :, 6:].any()
    states = stacked_encode(encoders, ids, mask)
    assert states.shape == (3, 2, B, 10, 16)
    g = torch.Generator().manual_seed(3)
    stacked_loss = separate_loss = 0.0
    for m, (encoder, (x, valid)) in enumerate(zip(encoders, inputs, strict=True)):
        out = encoder(x, valid, validate=False)
        width = x.shape[1]
        got, last = states[:, m, :, :width], encoder.norm(states[-1, m, :, :width])
        real = valid.any(dim=1)  # a row with no token attends to its padding: its states are not read
        torch.testing.assert_close(got[:, real], out.hidden_states[:, real], rtol=0, atol=1e-12)
        torch.testing.assert_close(last[real], out.last_hidden[real], rtol=0, atol=1e-12)
        weight = torch.randn(out.hidden_states.shape, generator=g, dtype=torch.float64) * valid[None, :, :, None]
        stacked_loss = stacked_loss + (got * weight).sum() + (last * weight[-1]).sum()
        separate_loss = separate_loss + (out.hidden_states * weight).sum() + (out.last_hidden * weight[-1]).sum()
    params = [p for e in encoders for p in e.parameters()]
    got = torch.autograd.grad(stacked_loss, params, allow_unused=True)
    want = torch.autograd.grad(separate_loss, params, allow_unused=True)
    for p, a, b in zip(params, got, want, strict=True):
        assert (a is None) == (b is None), p.shape
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_what_does_not_stack():
    encoders = _pair()
    assert not encoders_stackable(encoders[:1])
    assert not encoders_stackable(_pair(position_encoding="relative"))
    assert not encoders_stackable(_pair(num_experts=2))
    other = _pair(ffn_hidden_dim=32)[1]
    assert not encoders_stackable([encoders[0], other])
    dropout = _pair(dropout=0.1)
    assert encoders_stackable(dropout)  # eval mode: the dropout never fires
    dropout[0].train()
    assert not encoders_stackable(dropout)
