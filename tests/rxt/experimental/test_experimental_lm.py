import pytest
import torch

from rxt.experimental.lm import ATTENTION_NAMES, ExperimentalAttentionTransformer, ExperimentalLMConfig


def _config(name, **kw):
    return ExperimentalLMConfig(
        vocab_size=40,
        dim=32,
        num_layers=2,
        num_heads=8,
        ffn_hidden_dim=64,
        max_seq_len=32,
        attention=name,
        window=4,
        num_global=1,
        flex_backend="sdpa",
        **kw,
    )


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_every_attention_builds_and_trains_a_step(name):
    torch.manual_seed(0)
    model = ExperimentalAttentionTransformer(_config(name))
    ids = torch.randint(0, 40, (2, 10))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 10, 40)
    assert torch.isfinite(out.loss)
    if name in ("gma", "dma"):
        assert out.aux_loss.item() > 0
    else:
        assert out.aux_loss.item() == 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_padding_mask_runs():
    model = ExperimentalAttentionTransformer(_config("gma"))
    ids = torch.randint(0, 40, (2, 8))
    valid = torch.ones(2, 8, dtype=torch.bool)
    valid[1, 5:] = False
    assert torch.isfinite(model(ids, attention_mask=valid).logits).all()


def test_loss_decreases():
    torch.manual_seed(0)
    model = ExperimentalAttentionTransformer(_config("gma"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 40, (4, 16))
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3


def test_unknown_name():
    with pytest.raises(ValueError):
        _config("hma")
