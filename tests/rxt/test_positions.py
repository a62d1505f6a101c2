"""Legacy positional encodings: learned absolute positions and T5-style relative position bias."""

from __future__ import annotations

import math

import pytest
import torch

from rxt.positions import LearnedAbsolutePositions, RelativePositionBias


def _reference_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    """T5 bucketing for one relative position rel = k - q, written from the formula."""
    n = -rel
    offset = 0
    if bidirectional:
        num_buckets //= 2
        if n < 0:
            offset = num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return offset + n
    large = exact + math.floor(math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact))
    return offset + min(large, num_buckets - 1)


def test_learned_positions_look_up_rows() -> None:
    torch.manual_seed(0)
    pos = LearnedAbsolutePositions(max_len=10, dim=4)
    positions = torch.tensor([[0, 3, 9], [2, 2, 5]])
    out = pos(positions)
    assert out.shape == (2, 3, 4)
    torch.testing.assert_close(out[1, 2], pos.embedding.weight[5])
    torch.testing.assert_close(out[0, 2], pos.embedding.weight[9])


@pytest.mark.parametrize("bad", [10, 11, -1])
def test_learned_positions_raise_out_of_range(bad: int) -> None:
    pos = LearnedAbsolutePositions(max_len=10, dim=4)
    with pytest.raises(ValueError, match="max_len=10"):
        pos(torch.tensor([[0, bad]]))


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("num_buckets", "max_distance"), [(32, 128), (8, 20), (4, 5)])
def test_buckets_match_reference(bidirectional: bool, num_buckets: int, max_distance: int) -> None:
    if not bidirectional and num_buckets == 4 and max_distance == 5:
        max_distance = 6
    bias = RelativePositionBias(2, num_buckets, max_distance, bidirectional)
    rel = torch.arange(-300, 301)
    expected = [_reference_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert bias.bucket(rel).tolist() == expected
    assert bias.bucket(rel).max().item() < num_buckets


def test_bucket_values_by_hand() -> None:
    bias = RelativePositionBias(1, num_buckets=32, max_distance=128, bidirectional=True)
    # 16 buckets per direction, distances 0..7 exact; keys after the query (k > q) use buckets 16..31.
    rel = torch.tensor([0, -3, 3, -7, -20, -100, -1000, 20])
    # |n|=20: 8 + floor(log(2.5)/log(16) * 8) = 8 + floor(2.64) = 10; |n|=100: 8 + floor(7.29) = 15.
    assert bias.bucket(rel).tolist() == [0, 3, 19, 7, 10, 15, 15, 26]
    causal = RelativePositionBias(1, num_buckets=32, max_distance=128, bidirectional=False)
    # 32 buckets, 0..15 exact; future keys all share bucket 0.
    # |n|=40: 16 + floor(log(2.5)/log(8) * 16) = 16 + floor(7.05) = 23.
    assert causal.bucket(torch.tensor([0, 5, 100, -5, -15, -40])).tolist() == [0, 0, 0, 5, 15, 23]


def test_relative_bias_depends_only_on_offset() -> None:
    torch.manual_seed(1)
    bias = RelativePositionBias(num_heads=3, num_buckets=16, max_distance=32)
    q = torch.randint(0, 60, (2, 5))
    k = torch.randint(0, 60, (2, 7))
    out = bias(q, k)
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float32
    # Shifting every position by the same amount changes nothing.
    torch.testing.assert_close(bias(q + 17, k + 17), out, rtol=0, atol=0)
    # Each entry is the learned value for the bucket of k - q, read for that head.
    table = bias.bias.weight  # (num_buckets, H)
    for b in range(2):
        for i in range(5):
            for j in range(7):
                rel = int(k[b, j] - q[b, i])
                expected = table[_reference_bucket(rel, True, 16, 32)]
                torch.testing.assert_close(out[b, :, i, j], expected, rtol=0, atol=0)


def test_relative_bias_is_toeplitz_and_directional() -> None:
    torch.manual_seed(2)
    bias = RelativePositionBias(num_heads=2, num_buckets=8, max_distance=16)
    t = torch.arange(12)[None]
    out = bias(t, t)[0]  # (H, T, T)
    torch.testing.assert_close(out[:, 1:, 1:], out[:, :-1, :-1], rtol=0, atol=0)
    # Bidirectional: a key 2 before and a key 2 after the query fall in different buckets.
    assert not torch.equal(out[:, 5, 3], out[:, 5, 7])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_heads": 0}, "num_heads=0"),
        ({"num_buckets": 5}, "num_buckets=5"),
        ({"num_buckets": 1, "bidirectional": False}, "num_buckets=1"),
        ({"num_buckets": 32, "max_distance": 8}, "max_distance=8"),
    ],
)
def test_relative_bias_bad_config(kwargs: dict, field: str) -> None:
    args = {"num_heads": 2, **kwargs}
    with pytest.raises(ValueError, match=field):
        RelativePositionBias(**args)


def test_learned_positions_bad_config() -> None:
    with pytest.raises(ValueError, match="max_len=0"):
        LearnedAbsolutePositions(0, 4)
