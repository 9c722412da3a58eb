"""Learned, rotary and axial position embeddings."""

from __future__ import annotations

import pytest
import torch

from longseq.layers import AxialPositions, LearnedPositions, RotaryEmbedding, apply_rotary


def test_learned_adds_table_and_limits_length() -> None:
    pos = LearnedPositions(10, 6).double()
    x = torch.randn(2, 7, 6, dtype=torch.float64)
    torch.testing.assert_close(pos(x) - x, pos.weight[:7].expand(2, 7, 6))
    torch.testing.assert_close(pos(x, offset=3) - x, pos.weight[3:10].expand(2, 7, 6))
    with pytest.raises(ValueError, match="max_len=10"):
        pos(torch.randn(1, 11, 6))
    with pytest.raises(ValueError, match="max_len=10"):
        pos(x, offset=4)


def test_rotary_relative_positions_and_norm() -> None:
    d, n, shift = 8, 9, 5
    rope = RotaryEmbedding(d)
    q = torch.randn(1, 2, n, d, dtype=torch.float64)
    k = torch.randn(1, 2, n, d, dtype=torch.float64)
    q0, k0 = rope.rotate(q, k)
    q1, k1 = rope.rotate(q, k, offset=shift)  # the same vectors, every position moved by shift
    torch.testing.assert_close(q0 @ k0.transpose(-1, -2), q1 @ k1.transpose(-1, -2))
    torch.testing.assert_close(q0.norm(dim=-1), q.norm(dim=-1))
    # Position 0 is the identity, and a different shift per tensor changes the scores.
    torch.testing.assert_close(q0[..., 0, :], q[..., 0, :])
    qs, _ = rope.rotate(q, k, offset=shift)
    assert ((qs @ k0.transpose(-1, -2)) - (q0 @ k0.transpose(-1, -2))).abs().max() > 1e-3


def test_rotary_dot_depends_only_on_offset() -> None:
    d = 6
    rope = RotaryEmbedding(d, base=100.0)
    cos, sin = rope.cos_sin(20, dtype=torch.float64)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    rq = apply_rotary(q.expand(20, d), cos, sin)  # q at every position 0..19
    rk = apply_rotary(k.expand(20, d), cos, sin)
    dots = rq @ rk.T  # dots[i, j] = <rot(q, i), rot(k, j)>
    for delta in (-3, 0, 4):
        diag = torch.diagonal(dots, offset=delta)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag))


def test_rotary_errors() -> None:
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match="head_dim=8"):
        RotaryEmbedding(8).rotate(torch.randn(1, 1, 3, 6), torch.randn(1, 1, 3, 6))


def test_axial_table() -> None:
    a, b, d1, d2 = 3, 4, 2, 5
    pos = AxialPositions((a, b), (d1, d2), hidden=7).double()
    table = pos.table()
    assert table.shape == (a * b, d1 + d2) and pos.max_len == 12
    expected = torch.cat(
        (pos.weight1.expand(a, b, d1), pos.weight2.expand(a, b, d2)), dim=-1
    ).reshape(a * b, d1 + d2)
    torch.testing.assert_close(table, expected)
    for p in range(a * b):  # row p = concat(E1[p // b], E2[p % b])
        torch.testing.assert_close(table[p, :d1], pos.weight1[p // b, 0])
        torch.testing.assert_close(table[p, d1:], pos.weight2[0, p % b])
    x = torch.randn(2, 10, 7, dtype=torch.float64)
    torch.testing.assert_close(pos(x) - x, table[:10].expand(2, 10, 7))


def test_axial_errors() -> None:
    with pytest.raises(ValueError, match="hidden=8"):
        AxialPositions((2, 3), (3, 4), hidden=8)
    pos = AxialPositions((2, 3), (3, 4))
    with pytest.raises(ValueError, match="max_len=6"):
        pos(torch.randn(1, 7, 7))
    with pytest.raises(ValueError, match="axial_dims"):
        pos(torch.randn(1, 4, 8))
