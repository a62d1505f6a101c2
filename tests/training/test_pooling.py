import pytest
import torch
import torch.nn.functional as F

from training.pooling import pool_to_slots, pooling_weights


def _reference(encoded: torch.Tensor, key_valid: torch.Tensor, slots: int) -> torch.Tensor:
    """Per row: adaptive_avg_pool1d over the row's real tokens only (float64)."""
    L, B, _, D = encoded.shape
    out = torch.zeros(L, B, slots, D, dtype=torch.float64)
    for b in range(B):
        real = encoded[:, b][:, key_valid[b]].double()  # (L, n, D)
        out[:, b] = F.adaptive_avg_pool1d(real.transpose(1, 2), slots).transpose(1, 2)
    return out


@pytest.mark.parametrize("slots", [1, 3, 5, 8, 13, 32])
def test_matches_adaptive_pooling_per_row_lengths(slots):
    g = torch.Generator().manual_seed(0)
    L, B, T, D = 2, 4, 8, 6
    encoded = torch.randn(L, B, T, D, generator=g, dtype=torch.float64)
    lengths = torch.tensor([8, 5, 1, 3])
    key_valid = torch.arange(T)[None, :] < lengths[:, None]
    pooled = pool_to_slots(encoded, key_valid, slots)
    assert pooled.shape == (L, B, slots, D)
    torch.testing.assert_close(pooled, _reference(encoded, key_valid, slots))


def test_slot_count_differs_from_sequence_length():
    L, B, T, D = 1, 1, 4, 1
    encoded = torch.arange(T, dtype=torch.float64).view(L, B, T, D)  # tokens 0, 1, 2, 3
    valid = torch.ones(B, T, dtype=torch.bool)
    # S > T: tokens repeat, and the last slot is the last token (content spans the whole interaction).
    assert pool_to_slots(encoded, valid, 8).flatten().tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    # S < T: neighbours averaged.
    assert pool_to_slots(encoded, valid, 2).flatten().tolist() == [0.5, 2.5]
    # S == T: identity.
    assert pool_to_slots(encoded, valid, 4).flatten().tolist() == [0, 1, 2, 3]
    # One real token fills every slot (no slot is left empty / tied to a padded position).
    one = torch.tensor([[True, False, False, False]])
    assert pool_to_slots(encoded, one, 6).flatten().tolist() == [0.0] * 6
    last = torch.tensor([[False, False, False, True]])
    assert pool_to_slots(encoded, last, 3).flatten().tolist() == [3.0] * 3


def test_padding_never_affects_the_result():
    g = torch.Generator().manual_seed(1)
    L, B, T, D = 2, 3, 7, 4
    encoded = torch.randn(L, B, T, D, generator=g)
    key_valid = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0], [0, 1, 0, 1, 1, 0, 0]], dtype=torch.bool)
    base = pool_to_slots(encoded, key_valid, 5)
    junk = encoded.clone()
    junk[:, ~key_valid] = torch.randn(L, int((~key_valid).sum()), D, generator=g) * 1e3
    torch.testing.assert_close(pool_to_slots(junk, key_valid, 5), base)
    junk[:, ~key_valid] = float("nan")
    torch.testing.assert_close(pool_to_slots(junk, key_valid, 5), base)
    # Extra right padding does not change anything either.
    wider = torch.cat([encoded, torch.randn(L, B, 3, D, generator=g)], dim=2)
    wider_valid = torch.cat([key_valid, torch.zeros(B, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(pool_to_slots(wider, wider_valid, 5), base)


@pytest.mark.parametrize("slots", [1, 4, 7, 20])
def test_constant_sequence_pools_to_constant(slots):
    L, B, T, D = 2, 3, 7, 5
    value = torch.randn(L, 1, 1, D)
    encoded = value.expand(L, B, T, D).clone()
    key_valid = torch.arange(T)[None, :] < torch.tensor([7, 2, 1])[:, None]
    encoded[:, ~key_valid] = 99.0
    pooled = pool_to_slots(encoded, key_valid, slots)
    torch.testing.assert_close(pooled, value.expand(L, B, slots, D))


def test_weights_rows_sum_to_one_and_empty_row_is_zero():
    key_valid = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    w = pooling_weights(key_valid, 4)
    torch.testing.assert_close(w[0].sum(-1), torch.ones(4))
    assert torch.all(w[0, :, 2] == 0)
    assert torch.all(w[1] == 0)
    encoded = torch.randn(1, 2, 3, 2)
    assert torch.all(pool_to_slots(encoded, key_valid, 4)[:, 1] == 0)


def test_none_mask_and_bad_inputs():
    encoded = torch.randn(1, 2, 3, 4)
    torch.testing.assert_close(pool_to_slots(encoded, None, 3), encoded)
    with pytest.raises(ValueError, match="num_slots"):
        pool_to_slots(encoded, None, 0)
    with pytest.raises(ValueError, match="key_valid"):
        pool_to_slots(encoded, torch.ones(2, 5, dtype=torch.bool), 3)
    with pytest.raises(ValueError, match="encoded"):
        pool_to_slots(encoded[0], None, 3)


def test_gradient_flows_only_to_real_tokens():
    encoded = torch.randn(1, 1, 5, 2, requires_grad=True)
    valid = torch.tensor([[True, True, True, False, False]])
    pool_to_slots(encoded, valid, 4).sum().backward()
    assert torch.all(encoded.grad[0, 0, 3:] == 0)
    assert torch.all(encoded.grad[0, 0, :3] != 0)
