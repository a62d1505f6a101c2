"""Bad input fails at the entry point with a message naming the value and the limit."""

import pytest
import torch

from rxt.config import RxTConfig
from rxt.model import RxT


@pytest.fixture(scope="module")
def model():
    return RxT(RxTConfig.preset("tiny")).eval()


def test_out_of_range_token_id(model):
    with pytest.raises(ValueError, match=r"token id 128.*vocab_size=128"):
        model(torch.tensor([[1, 2, 128]]))
    with pytest.raises(ValueError, match=r"token id -1"):
        model.encode(torch.tensor([[1, -1]]))


def test_sequence_longer_than_max(model):
    with pytest.raises(ValueError, match=r"65 tokens.*max_seq_len=64"):
        model(torch.ones(1, 65, dtype=torch.long))


def test_wrong_stm_shape(model):
    ids = torch.ones(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(2, 2, 8, 32\)"):
        model(ids, torch.zeros(2, 2, 9, 32))
    with pytest.raises(ValueError, match="STM|stm"):
        model.update_memory(torch.zeros(3, 2, 8, 32), ids)


def test_mask_shape_mismatch(model):
    with pytest.raises(ValueError, match="attention_mask shape"):
        model(torch.ones(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_heads=5), r"dim=32 must be divisible by num_heads=5"),
        (dict(self_attention=(4, 3)), r"num_query_heads=4 must be divisible by num_kv_heads=3"),
        (dict(stm_slots=0), r"stm_slots=0"),
        (dict(memory_free_layers=(5,)), r"memory_free_layers"),
        (dict(position_encoding="alibi"), r"position_encoding='alibi'"),
        (dict(self_attention="bogus"), r"'bogus' is unknown"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        RxTConfig.preset("tiny", **overrides)


def test_generation_budget_error(model):
    from rxt.generation import generate
    from rxt.sampling import SamplingConfig

    with pytest.raises(ValueError, match=r"max_seq_len=64"):
        generate(model.decoder, torch.ones(1, 60, dtype=torch.long), sampling=SamplingConfig(max_new_tokens=10),
                 eos_id=3, pad_id=0)
