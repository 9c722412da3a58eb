"""Chunked feed-forward equals the unchunked one (outputs and gradients)."""

from __future__ import annotations

import pytest
import torch

from longseq.layers import ChunkedFeedForward, FeedForward


def out_and_grads(ff: torch.nn.Module, x: torch.Tensor, w: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = ff(x)
    grads = torch.autograd.grad((y * w).sum(), [x, *ff.parameters()])
    return y.detach(), grads


@pytest.mark.parametrize("chunk_size", [None, 0, 1, 4, 5, 13, 40])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_chunked_equals_unchunked(chunk_size: int | None, activation: str) -> None:
    ff = FeedForward(8, 32, activation=activation, dropout=0.2).double().eval()
    x = torch.randn(2, 13, 8, dtype=torch.float64)  # 13: not a multiple of the chunk sizes
    w = torch.randn_like(x)
    ref = out_and_grads(ff, x, w)
    for chunked in (ChunkedFeedForward(ff, chunk_size), FeedForward(8, 32, activation=activation)):
        if isinstance(chunked, FeedForward):
            chunked.load_state_dict(ff.state_dict())
            chunked = chunked.double().eval()
            chunked.chunk_size = chunk_size
        got = out_and_grads(chunked, x, w)
        torch.testing.assert_close(got[0], ref[0], rtol=0, atol=1e-12)
        for a, b in zip(got[1], ref[1], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_chunks_are_bounded() -> None:
    seen: list[int] = []
    ff = FeedForward(4, 8, chunk_size=3)
    ff.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    ff(torch.randn(1, 10, 4))
    assert seen == [3, 3, 3, 1]


def test_errors() -> None:
    with pytest.raises(ValueError, match="activation"):
        FeedForward(4, 8, activation="swishy")
    with pytest.raises(ValueError, match="chunk_size"):
        FeedForward(4, 8, chunk_size=-1)
    with pytest.raises(ValueError, match="dropout"):
        FeedForward(4, 8, dropout=1.0)
