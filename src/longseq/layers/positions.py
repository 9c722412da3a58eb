"""Position information: learned absolute, rotary (RoPE) and axial (Reformer) embeddings.

Learned:  x_i + P[offset + i],  P a (max_len, hidden) table.

Rotary (Su et al., RoFormer): pair dimension j with j + D/2 and rotate each pair of a query or
key at position m by the angle m * theta_j, theta_j = base^(-2j/D):

    rot(x, m) = x * cos(m theta) + rotate_half(x) * sin(m theta),
    rotate_half([a, b]) = [-b, a].

Rotations compose, so <rot(q, m), rot(k, n)> = <q, rot(k, n - m)> depends only on n - m, and
each rotation preserves the norm.

Axial (Reformer): a (max_len, hidden) table for max_len = a * b is factored into two learned
tables E1 (a, d1) and E2 (b, d2), d1 + d2 = hidden. Position p = i * b + j gets

    P[p] = concat(E1[i], E2[j]),

so the parameters are a * d1 + b * d2 instead of a * b * hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def _check_length(n: int, offset: int, max_len: int, what: str) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    if offset + n > max_len:
        raise ValueError(
            f"sequence of {n} tokens (offset {offset}) exceeds the {what} limit max_len={max_len}; "
            f"truncate the input or build the embedding with a larger max_len"
        )


class LearnedPositions(nn.Module):
    """Learned absolute positions; `forward(x)` returns x + P[offset : offset + seq]."""

    def __init__(self, max_len: int, hidden: int, *, init_std: float = 0.02) -> None:
        super().__init__()
        if max_len <= 0 or hidden <= 0:
            raise ValueError(f"max_len and hidden must be positive, got {max_len} and {hidden}")
        self.max_len = max_len
        self.hidden = hidden
        self.weight = nn.Parameter(torch.randn(max_len, hidden) * init_std)

    def table(self, n: int, offset: int = 0) -> Tensor:
        """(n, hidden) embeddings of positions offset .. offset + n - 1."""
        _check_length(n, offset, self.max_len, "learned position")
        return self.weight[offset : offset + n]

    def forward(self, x: Tensor, offset: int = 0, positions: Tensor | None = None) -> Tensor:
        """(batch, seq, hidden) -> same shape with positions added: offset .. offset + seq - 1,
        or each token's own `positions` (batch, seq) (+ offset)."""
        if positions is None:
            return x + self.table(x.shape[1], offset).to(x.dtype)
        _check_length(int(positions.max()) + 1, offset, self.max_len, "learned position")
        return x + self.weight[positions + offset].to(x.dtype)


def rotate_half(x: Tensor) -> Tensor:
    """[a, b] -> [-b, a] over the last dimension (halves a, b)."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (..., N, D) by per-position angles; cos, sin (N, D) broadcast over the rest."""
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """Rotary position embedding for (B, H, N, D) queries and keys; no parameters."""

    inv_freq: Tensor

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 2:
            raise ValueError(f"head_dim must be positive and even for rotary, got {head_dim}")
        if base <= 0:
            raise ValueError(f"base must be positive, got {base}")
        self.head_dim = head_dim
        self.base = base
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        # The last tables made, reused while the same ones are asked for: every layer of a
        # model shares this module, so a forward computes its cos/sin once, not once per layer.
        self._memo: tuple[tuple[Any, ...], tuple[Tensor, Tensor], Any] | None = None

    def _remembered(
        self, key: tuple[Any, ...], make: Callable[[], tuple[Tensor, Tensor]], keep: Any = None
    ) -> tuple[Tensor, Tensor]:
        """make(), or the tables of the previous call when its `key` (plain values) is the
        same; `keep` is held with them (an object whose id is in the key stays alive, so the
        id is not reused). Not while compiling (a graph has no Python state); tables made in
        inference mode are not reused outside it (autograd refuses them)."""
        if torch.compiler.is_compiling():
            return make()
        key = (*key, torch.is_inference_mode_enabled(), str(self.inv_freq.device))
        if self._memo is None or self._memo[0] != key:
            self._memo = (key, make(), keep)
        return self._memo[1]

    def cos_sin(
        self,
        n: int,
        offset: int = 0,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """cos, sin tables (n, head_dim) for positions offset .. offset + n - 1."""
        return self._remembered(
            ("range", n, offset, str(device), dtype),
            lambda: self._cos_sin(n, offset, device=device, dtype=dtype),
        )

    def _cos_sin(
        self, n: int, offset: int, *, device: torch.device | None, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        pos = torch.arange(offset, offset + n, dtype=torch.float64, device=self.inv_freq.device)
        angles = torch.outer(pos, self.inv_freq)  # angles in fp64: exact for long sequences
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(device=device, dtype=dtype), angles.sin().to(device, dtype)

    def rotate(self, q: Tensor, k: Tensor, offset: int = 0) -> tuple[Tensor, Tensor]:
        """Rotated (q, k), both (B, H, N, D) with the sequence on dim -2.

        (Named `rotate`, not `apply`, so nn.Module.apply(fn) keeps working.)
        """
        if q.shape[-1] != self.head_dim or k.shape[-1] != self.head_dim:
            raise ValueError(
                f"rotary built for head_dim={self.head_dim}, got q/k last dims "
                f"{q.shape[-1]} and {k.shape[-1]}"
            )
        n = max(q.shape[-2], k.shape[-2])
        cos, sin = self.cos_sin(n, offset, device=q.device, dtype=q.dtype)
        nq, nk = q.shape[-2], k.shape[-2]
        return apply_rotary(q, cos[:nq], sin[:nq]), apply_rotary(k, cos[:nk], sin[:nk])

    def forward(
        self, q: Tensor, k: Tensor, offset: int = 0, positions: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Rotated (q, k) at positions offset .. offset + N - 1, or at each token's own
        `positions` (B, N) (incremental decoding)."""
        if positions is None:
            return self.rotate(q, k, offset)

        def gathered() -> tuple[Tensor, Tensor]:
            lo = int(positions.min())
            n = int(positions.max()) - lo + 1
            cos, sin = self._cos_sin(n, lo, device=q.device, dtype=q.dtype)
            return cos[positions - lo][:, None], sin[positions - lo][:, None]  # (B, 1, N, D)

        # the same positions tensor (one decoding step's, passed to every layer): its id (it
        # is kept alive with the tables) and its version (an in-place change is seen)
        key = ("positions", id(positions), positions._version, str(q.device), q.dtype)
        cos, sin = self._remembered(key, gathered, keep=positions)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


class AxialPositions(nn.Module):
    """Reformer's axial positions: max_len = a * b positions from tables (a, d1) and (b, d2).

    `forward(x)` returns x + P[:seq] for x (batch, seq, d1 + d2). Pass `hidden` to check
    d1 + d2 == hidden at construction.
    """

    def __init__(
        self,
        axial_shape: tuple[int, int],
        axial_dims: tuple[int, int],
        *,
        hidden: int | None = None,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if len(axial_shape) != 2 or len(axial_dims) != 2:
            raise ValueError(
                f"axial_shape and axial_dims must be pairs, got {axial_shape} and {axial_dims}"
            )
        if min(axial_shape) <= 0 or min(axial_dims) <= 0:
            raise ValueError(
                f"axial_shape and axial_dims must be positive, got {axial_shape} and {axial_dims}"
            )
        if hidden is not None and sum(axial_dims) != hidden:
            raise ValueError(
                f"axial_dims {tuple(axial_dims)} sum to {sum(axial_dims)} but hidden={hidden}; "
                "choose axial_dims with d1 + d2 == hidden"
            )
        a, b = axial_shape
        d1, d2 = axial_dims
        self.axial_shape = (a, b)
        self.axial_dims = (d1, d2)
        self.max_len = a * b
        self.hidden = d1 + d2
        self.weight1 = nn.Parameter(torch.randn(a, 1, d1) * init_std)  # row table E1
        self.weight2 = nn.Parameter(torch.randn(1, b, d2) * init_std)  # column table E2

    def table(self, n: int | None = None) -> Tensor:
        """(n, d1 + d2) table, n <= a * b (default a * b); row p = concat(E1[p // b], E2[p % b])."""
        n = self.max_len if n is None else n
        _check_length(n, 0, self.max_len, f"axial position (axial_shape={self.axial_shape})")
        a, b = self.axial_shape
        full = torch.cat(
            (self.weight1.expand(a, b, -1), self.weight2.expand(a, b, -1)), dim=-1
        ).reshape(a * b, self.hidden)
        return full[:n]

    def forward(self, x: Tensor, positions: Tensor | None = None) -> Tensor:
        """x + the table's rows 0 .. seq - 1, or each token's own `positions` (batch, seq)."""
        if x.shape[-1] != self.hidden:
            raise ValueError(
                f"input hidden size {x.shape[-1]} != sum of axial_dims {self.axial_dims} "
                f"= {self.hidden}"
            )
        if positions is None:
            return x + self.table(x.shape[1]).to(x.dtype)
        return x + self.table(int(positions.max()) + 1)[positions].to(x.dtype)


__all__ = ["AxialPositions", "LearnedPositions", "RotaryEmbedding", "apply_rotary", "rotate_half"]
