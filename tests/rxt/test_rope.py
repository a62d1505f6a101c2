"""Rotary position embeddings: relative-position property, norm preservation, and where Attention applies them."""

from __future__ import annotations

import pytest
import torch

from rxt.attention import Attention
from rxt.attention_config import AttentionConfig
from rxt.rope import RopeMode, RotaryEmbedding

HEAD_DIM = 8
MAX_LEN = 128


def _reference_rotate(x: torch.Tensor, positions: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """Half-split RoPE written as 2x2 rotations: (x_i, x_{i+d/2}) turned by pos * base^(-2i/d)."""
    d = x.shape[-1]
    half = d // 2
    out = torch.empty_like(x)
    for i in range(half):
        angle = positions.to(torch.float64) * base ** (-2.0 * i / d)
        if angle.dim() == 2:  # (B, T) -> broadcast over heads
            angle = angle[:, None]
        c, s = torch.cos(angle).to(x.dtype), torch.sin(angle).to(x.dtype)
        a, b = x[..., i], x[..., i + half]
        out[..., i] = a * c - b * s
        out[..., i + half] = a * s + b * c
    return out


def _at(rope: RotaryEmbedding, v: torch.Tensor, pos: int) -> torch.Tensor:
    """Rotate one vector (d,) to position ``pos``."""
    return rope.rotate(v.view(1, 1, 1, -1), torch.tensor([pos]))[0, 0, 0]


def test_rotate_matches_reference_formula() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    x = torch.randn(2, 3, 5, HEAD_DIM, dtype=torch.float64)
    pos_1d = torch.tensor([0, 1, 7, 30, 127])
    torch.testing.assert_close(rope.rotate(x, pos_1d), _reference_rotate(x, pos_1d), rtol=1e-12, atol=1e-12)
    pos_2d = torch.tensor([[0, 1, 2, 3, 4], [9, 10, 11, 12, 13]])
    torch.testing.assert_close(rope.rotate(x, pos_2d), _reference_rotate(x, pos_2d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_rotate_is_the_pairwise_formula_bit_for_bit(dtype: torch.dtype) -> None:
    """The table form (x * [cos|cos] + rotate_half(x) * [-sin|sin]) equals the pairwise rotation
    (x1 cos - x2 sin, x1 sin + x2 cos) with the same cos/sin exactly, in every dtype: one rounding per product and
    per sum in both, a - b == a + (-b) and addition commutes."""
    torch.manual_seed(0)
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    half = HEAD_DIM // 2
    x = torch.randn(2, 3, 9, HEAD_DIM).to(dtype)
    for positions in (torch.arange(9), torch.randint(0, MAX_LEN, (2, 9))):
        cos = rope.table[positions][..., 0, :half].to(dtype)
        sin = rope.table[positions][..., 1, half:].to(dtype)
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        x1, x2 = x[..., :half], x[..., half:]
        pairwise = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
        assert torch.equal(rope.rotate(x, positions), pairwise)


def test_table_stays_float64_when_the_model_is_cast() -> None:
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN).to(torch.bfloat16)
    assert rope.table.dtype == torch.float64
    x = torch.randn(1, 2, 4, HEAD_DIM, dtype=torch.bfloat16)
    assert rope.rotate(x, torch.arange(4)).dtype == torch.bfloat16


def test_position_zero_is_identity() -> None:
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    x = torch.randn(1, 2, 3, HEAD_DIM, dtype=torch.float64)
    torch.testing.assert_close(rope.rotate(x, torch.zeros(3, dtype=torch.long)), x, rtol=0, atol=0)


@pytest.mark.parametrize("m,n", [(5, 2), (2, 5), (10, 10), (0, 17), (40, 3)])
def test_scores_depend_only_on_offset(m: int, n: int) -> None:
    torch.manual_seed(1)
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    q = torch.randn(HEAD_DIM, dtype=torch.float64)
    k = torch.randn(HEAD_DIM, dtype=torch.float64)
    base_score = _at(rope, q, m) @ _at(rope, k, n)
    for shift in (1, 3, 11, 50):
        shifted = _at(rope, q, m + shift) @ _at(rope, k, n + shift)
        torch.testing.assert_close(shifted, base_score, rtol=1e-10, atol=1e-10)
    # ...and do depend on the offset (an identity "rotation" would pass the loop above).
    other = _at(rope, q, m + 1) @ _at(rope, k, n)
    assert not torch.allclose(other, base_score, atol=1e-6)


def test_rotation_preserves_norm() -> None:
    torch.manual_seed(2)
    rope = RotaryEmbedding(HEAD_DIM, MAX_LEN)
    x = torch.randn(2, 3, 6, HEAD_DIM, dtype=torch.float64)
    positions = torch.tensor([[0, 5, 9, 33, 64, 127], [1, 2, 3, 4, 5, 6]])
    rotated = rope.rotate(x, positions)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(rotated[:, :, 1:], x[:, :, 1:])


@pytest.mark.parametrize("head_dim", [1, 5, 7])
def test_odd_head_dim_errors(head_dim: int) -> None:
    with pytest.raises(ValueError, match=f"head_dim={head_dim}"):
        RotaryEmbedding(head_dim, MAX_LEN)


def test_bad_max_seq_len_errors() -> None:
    with pytest.raises(ValueError, match="max_seq_len=0"):
        RotaryEmbedding(HEAD_DIM, 0)


def test_rope_mode_sides() -> None:
    assert RopeMode.FULL.rotates_queries and RopeMode.FULL.rotates_keys
    assert RopeMode.QUERY.rotates_queries and not RopeMode.QUERY.rotates_keys
    assert RopeMode.KEY.rotates_keys and not RopeMode.KEY.rotates_queries
    assert not RopeMode.NONE.rotates_queries and not RopeMode.NONE.rotates_keys


def _unrotated(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain projections (B, H, T, d) of x for queries and keys, without any rotation."""
    b, t, _ = x.shape
    d = attn.cfg.head_dim
    q = (x @ attn.q_proj.weight.T).view(b, t, attn.cfg.num_query_heads, d).transpose(1, 2)
    k = (x @ attn.k_proj.weight.T).view(b, t, attn.cfg.num_kv_heads, d).transpose(1, 2)
    return q, k


@pytest.mark.parametrize("mode", ["none", "full", "query", "key"])
def test_attention_rotates_the_sides_its_mode_names(mode: str) -> None:
    torch.manual_seed(3)
    cfg = AttentionConfig.variant("gqa", dim=32, num_heads=4)  # head_dim 8, H_q 4, H_kv 1
    rope = RotaryEmbedding(cfg.head_dim, MAX_LEN)
    attn = Attention(cfg, rope=rope, rope_mode=mode).double()
    x = torch.randn(2, 5, 32, dtype=torch.float64)
    positions = torch.tensor([[3, 4, 5, 6, 7], [10, 11, 12, 13, 14]])  # no position 0: every token rotates
    q_plain, k_plain = _unrotated(attn, x)
    q = attn.project_query(x, positions)
    k, v = attn.project_key_value(x, positions)
    rq = mode in ("full", "query")
    rk = mode in ("full", "key")
    torch.testing.assert_close(q, _reference_rotate(q_plain, positions) if rq else q_plain)
    torch.testing.assert_close(k, _reference_rotate(k_plain, positions) if rk else k_plain)
    assert torch.allclose(q, q_plain) is not rq
    assert torch.allclose(k, k_plain) is not rk
    # Values are never rotated.
    v_plain = (x @ attn.v_proj.weight.T).view(2, 5, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
    torch.testing.assert_close(v, v_plain)


def test_default_positions_count_from_zero() -> None:
    torch.manual_seed(4)
    cfg = AttentionConfig(dim=16, num_heads=2)
    attn = Attention(cfg, rope=RotaryEmbedding(cfg.head_dim, MAX_LEN), rope_mode="full").double()
    x = torch.randn(1, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(attn.project_query(x), attn.project_query(x, torch.arange(6)), rtol=0, atol=0)
