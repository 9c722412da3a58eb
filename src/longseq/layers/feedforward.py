"""Position-wise feed-forward, optionally gated (SwiGLU) and chunked along the sequence.

    FF(x) = dropout(W2 dropout(act(W1 x + b1)) + b2),   W1: hidden -> ff_size, W2: ff_size -> hidden

Gated (`gated=True`, Shazeer 2020; Llama's SwiGLU with act = silu), a second input projection
Wg (the gate) multiplies the activation elementwise:

    FF(x) = dropout(W2 dropout(act(Wg x + bg) * (W1 x + b1)) + b2)

(Hugging Face's Llama names Wg `gate_proj`, W1 `up_proj`, W2 `down_proj`.)

FF acts on every position independently, so for any split of the sequence into chunks
[x_1; ...; x_c] we have FF([x_1; ...; x_c]) = [FF(x_1); ...; FF(x_c)] exactly. Applying it chunk
by chunk bounds the (seq, ff_size) intermediate to (chunk_size, ff_size). Under plain autograd
each chunk's intermediate is still kept for backward; the memory win is complete inside
`ReversibleSequence`, whose recomputation holds one block's activations at a time.
In training mode with dropout the masks are drawn per chunk, so chunked and unchunked
outputs differ by which random mask hits which position (eval mode: identical).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def apply_chunked(
    fn: Callable[[Tensor], Tensor], x: Tensor, chunk_size: int | None, dim: int = 1
) -> Tensor:
    """fn applied to chunks of `chunk_size` along `dim` (the last may be shorter); None/0: whole."""
    if not chunk_size or x.shape[dim] <= chunk_size:
        return fn(x)
    return torch.cat([fn(c) for c in x.split(chunk_size, dim=dim)], dim=dim)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 0):
        raise ValueError(f"chunk_size must be None, 0 (no chunking) or positive, got {chunk_size}")


class FeedForward(nn.Module):
    """hidden -> ff_size -> hidden with `activation`, dropout, optional gate and `chunk_size`
    (see above)."""

    def __init__(
        self,
        hidden: int,
        ff_size: int,
        activation: str = "gelu",
        dropout: float = 0.0,
        *,
        chunk_size: int | None = None,
        bias: bool = True,
        gated: bool = False,
    ) -> None:
        super().__init__()
        if hidden <= 0 or ff_size <= 0:
            raise ValueError(f"hidden and ff_size must be positive, got {hidden} and {ff_size}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        _check_chunk_size(chunk_size)
        self.fc1 = nn.Linear(hidden, ff_size, bias=bias)
        self.fc2 = nn.Linear(ff_size, hidden, bias=bias)
        self.gate = nn.Linear(hidden, ff_size, bias=bias) if gated else None
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.dropout = nn.Dropout(dropout)
        self.chunk_size = chunk_size

    def _ff(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        h = self.act(h) if self.gate is None else self.act(self.gate(x)) * h
        return self.dropout(self.fc2(self.dropout(h)))

    def forward(self, x: Tensor) -> Tensor:
        """(batch, seq, hidden) -> (batch, seq, hidden)."""
        return apply_chunked(self._ff, x, self.chunk_size)


class ChunkedFeedForward(nn.Module):
    """Wraps any position-wise module `ff` to run on `chunk_size`-token chunks of dim 1."""

    def __init__(self, ff: nn.Module, chunk_size: int | None) -> None:
        super().__init__()
        _check_chunk_size(chunk_size)
        self.ff = ff
        self.chunk_size = chunk_size

    def forward(self, x: Tensor) -> Tensor:
        return apply_chunked(self.ff, x, self.chunk_size)


__all__ = ["ACTIVATIONS", "ChunkedFeedForward", "FeedForward", "apply_chunked"]
