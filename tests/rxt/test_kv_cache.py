"""The preallocated KV cache: per-row positions, writes, overflow, reset."""

from __future__ import annotations

import pytest
import torch

from rxt.kv_cache import KVCache
from rxt.masks import cached_causal_mask


def _cache(capacity: int = 8, batch: int = 3) -> KVCache:
    return KVCache(num_layers=2, batch_size=batch, num_kv_heads=2, head_dim=4, capacity=capacity)


def test_shapes_and_start_state() -> None:
    cache = _cache()
    assert cache.k.shape == cache.v.shape == (2, 3, 2, 8, 4)
    assert cache.batch_size == 3
    assert cache.written == 0
    assert cache.lengths.tolist() == [0, 0, 0]
    assert cache.positions_for(3).tolist() == [[0, 1, 2]] * 3


def test_positions_follow_per_row_lengths() -> None:
    cache = _cache()
    cache.advance(4, torch.tensor([4, 1, 3]))  # a right-padded prefill of 4 positions
    assert cache.written == 4
    assert cache.lengths.tolist() == [4, 1, 3]
    assert cache.positions_for(2).tolist() == [[4, 5], [1, 2], [3, 4]]
    cache.advance(1)  # one decode step: every row gains one real token
    assert cache.written == 5
    assert cache.positions_for(1).tolist() == [[5], [2], [4]]


def test_write_scatters_per_row_and_returns_used_prefix() -> None:
    cache = _cache()
    k = torch.arange(3 * 2 * 2 * 4, dtype=torch.float32).view(3, 2, 2, 4)
    v = -k
    positions = cache.positions_for(2)
    k_all, v_all = cache.write(1, k, v, positions)
    assert k_all.shape == (3, 2, 2, 4)
    torch.testing.assert_close(k_all, k)
    torch.testing.assert_close(v_all, v)
    assert cache.k[0].abs().sum() == 0  # other layers untouched
    cache.advance(2, torch.tensor([2, 1, 0]))

    step_k = torch.full((3, 2, 1, 4), 100.0)
    positions = cache.positions_for(1)
    k_all, v_all = cache.write(1, step_k, -step_k, positions)
    assert k_all.shape == (3, 2, 3, 4)  # written (2) + 1
    # Row 0 writes at 2, row 1 overwrites its padding at 1, row 2 overwrites position 0.
    assert (k_all[0, :, 2] == 100).all() and (k_all[0, :, :2] == k[0]).all()
    assert (k_all[1, :, 1] == 100).all() and (k_all[1, :, 0] == k[1, :, 0]).all()
    assert (k_all[2, :, 0] == 100).all() and (k_all[2, :, 1] == k[2, :, 1]).all()
    assert (v_all[1, :, 1] == -100).all()


def test_cached_mask_sees_only_keys_up_to_position() -> None:
    positions = torch.tensor([[2], [0], [4]])
    mask = cached_causal_mask(positions, 5)
    assert mask.shape == (3, 1, 1, 5)
    assert mask[:, 0, 0].tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],
        [True, True, True, True, True],
    ]


def test_overflow_names_capacity() -> None:
    cache = _cache(capacity=6)
    with pytest.raises(ValueError, match="capacity=6"):
        cache.positions_for(7)
    cache.positions_for(6)  # exactly full is fine
    cache.advance(4, torch.tensor([4, 2, 1]))
    cache.positions_for(2)
    with pytest.raises(ValueError, match=r"4 positions used \+ 3 new > capacity=6"):
        cache.positions_for(3)


def test_bad_capacity() -> None:
    with pytest.raises(ValueError, match="capacity=0"):
        _cache(capacity=0)


def test_reset_starts_over() -> None:
    cache = _cache(capacity=4)
    cache.advance(4, torch.tensor([4, 3, 2]))
    with pytest.raises(ValueError, match="capacity=4"):
        cache.positions_for(1)
    cache.reset()
    assert cache.written == 0
    assert cache.lengths.tolist() == [0, 0, 0]
    assert cache.positions_for(4).tolist() == [[0, 1, 2, 3]] * 3
