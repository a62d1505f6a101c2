"""The decoder's memory keys/values projected for all layers at once (`rxt.memory_read_stacked`) equal the layer
loop, float64, and so do their gradients."""

from __future__ import annotations

import pytest
import torch

from rxt.config import RxTConfig
from rxt.decoder import Decoder
from rxt.memory_read_stacked import memory_reads_stackable, stacked_memory_key_value


def _decoder(**cfg) -> Decoder:
    torch.manual_seed(0)
    config = RxTConfig(**{"vocab_size": 40, "dim": 16, "num_layers": 3, "num_heads": 4, "max_seq_len": 32,
                          "ffn_hidden_dim": 24, "stm_slots": 5, **cfg})
    decoder = Decoder(config).double()
    with torch.no_grad():  # every layer its own weights: a wrong layer pairing shows
        g = torch.Generator().manual_seed(1)
        for p in decoder.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return decoder


@pytest.mark.parametrize("cfg", [{}, {"cross_attention": "mha"}, {"cross_attention": "mqa"}])
def test_stacked_memory_projection_equals_the_layer_loop(cfg):
    decoder = _decoder(**cfg)
    layers = list(decoder.layers)
    assert memory_reads_stackable(layers)
    memory = torch.randn(3, 2, 5, 16, dtype=torch.float64, requires_grad=True)
    got = stacked_memory_key_value(layers, memory)
    want = [layer.project_memory(memory[i]) for i, layer in enumerate(layers)]
    g = torch.Generator().manual_seed(2)
    got_loss = want_loss = 0.0
    for (k, v), (k_ref, v_ref) in zip(got, want, strict=True):
        assert k.shape == k_ref.shape and v.shape == v_ref.shape
        torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-12)
        torch.testing.assert_close(v, v_ref, rtol=0, atol=1e-12)
        wk, wv = (torch.randn(t.shape, generator=g, dtype=torch.float64) for t in (k, v))
        got_loss = got_loss + (k * wk).sum() + (v * wv).sum()
        want_loss = want_loss + (k_ref * wk).sum() + (v_ref * wv).sum()
    inputs = [memory, *decoder.parameters()]
    got_grads = torch.autograd.grad(got_loss, inputs, allow_unused=True)
    want_grads = torch.autograd.grad(want_loss, inputs, allow_unused=True)
    for a, b in zip(got_grads, want_grads, strict=True):
        assert (a is None) == (b is None)  # the query/output projections, self-attention, FFN: none in both
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert decoder.project_memory(memory)[1][0].shape == want[1][0].shape  # the decoder takes the stacked path


def test_layers_without_memory_project_one_by_one():
    decoder = _decoder(memory_free_layers=[1])
    assert not memory_reads_stackable(list(decoder.layers))
    memory = torch.randn(3, 2, 5, 16, dtype=torch.float64)
    projected = decoder.project_memory(memory)
    assert projected[1] is None and projected[0] is not None and projected[2] is not None
    assert not memory_reads_stackable(list(decoder.layers)[:1])
