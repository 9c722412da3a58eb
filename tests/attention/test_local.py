"""Chunked local attention against dense attention under its pattern (Hugging Face's rule,
the port `local-hf`, is tested in tests/convert/test_hf_attention.py).

The invariants every mechanism owes (padding, batch = alone, causality, determinism,
gradcheck) run on the "local" configurations in cases.py.
"""

from __future__ import annotations

import pytest
import torch
from reference import layer_with_mask

from longseq import attention
from longseq.attention import patterns
from longseq.attention.local import LocalAttention

HIDDEN, HEADS = 16, 2
TOL = {"rtol": 1e-10, "atol": 1e-10}


def make(**opts) -> LocalAttention:
    return attention.build("local", HIDDEN, HEADS, **opts).double().eval()


def padded_batch(lengths: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(len(lengths), n, HIDDEN, dtype=torch.float64)
    real = torch.zeros(len(lengths), n, dtype=torch.bool)
    for i, length in enumerate(lengths):
        real[i, :length] = True
    return x, real


def dense_under_pattern(layer: LocalAttention, x: torch.Tensor, real: torch.Tensor):
    allowed = layer.pattern(x.shape[1])[None] & real[:, None, None, :]
    return layer_with_mask(layer, x, allowed, real)


def naive_pattern(n, c, before, after, causal, wrap_chunks=None):
    """The pattern with Python loops: the chunks a query's window lists, by index (with
    `wrap_chunks`, modulo that many chunks: Hugging Face's rule, the port `local-hf`)."""
    out = torch.zeros(n, n, dtype=torch.bool)
    for q in range(n):
        for o in range(-before, after + 1):
            ck = q // c + o
            if wrap_chunks:
                ck %= wrap_chunks
            for k in range(n):
                if k // c == ck and (not causal or k <= q):
                    out[q, k] = True
    return out


CONFIGS = [
    {"chunk_length": 4},
    {"chunk_length": 4, "causal": True},
    {"chunk_length": 3, "num_chunks_before": 2, "num_chunks_after": 1},
    {"chunk_length": 5, "num_chunks_before": 0, "num_chunks_after": 2, "causal": True},
    {"chunk_length": 32},  # one chunk: dense
]


def opts_id(o):
    return "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("opts", CONFIGS, ids=opts_id)
def test_pattern_matches_naive_loops(opts):
    layer = make(**opts)
    n = 18
    expected = naive_pattern(
        n, layer.chunk_length, layer.num_chunks_before, layer.num_chunks_after, layer.causal
    )
    assert torch.equal(layer.pattern(n), expected.expand(HEADS, n, n))


@pytest.mark.parametrize("opts", CONFIGS, ids=opts_id)
def test_equals_dense_under_pattern(opts):
    layer = make(**opts)
    x, real = padded_batch([18, 11, 15], 18)
    real[2, :2] = False  # left padding too
    x.requires_grad_(True)
    ours = layer(x, attention_mask=real)
    ref = dense_under_pattern(layer, x, real)
    torch.testing.assert_close(ours, ref, **TOL)
    w = torch.randn_like(ours)
    params = [x, *layer.parameters()]
    for a, b in zip(
        torch.autograd.grad((ours * w).sum(), params),
        torch.autograd.grad((ref * w).sum(), params),
        strict=True,
    ):
        torch.testing.assert_close(a, b, **TOL)


def test_the_oracle_can_fail():
    """A window one chunk wider changes the output: the pattern is not moot."""
    x, real = padded_batch([16], 16)
    layer = make(chunk_length=4)
    ours = layer(x, attention_mask=real)
    wider = patterns.materialize(patterns.chunked_local(4, before=2), 16)
    assert not torch.allclose(ours, layer_with_mask(layer, x, wider, real), atol=1e-6)


def test_options_and_registry():
    assert attention.get("local") is LocalAttention
    assert attention.options("local") == {
        "chunk_length": 64,
        "num_chunks_before": 1,
        "num_chunks_after": 0,
        "causal": False,
        "dropout": 0.0,
        "bias": True,
        "num_key_value_heads": None,
        "backend": "native",
    }
    layer = make(chunk_length=8, bias=False)
    assert layer.key.bias is None and "chunk_length=8" in repr(layer)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"chunk_length": 0}, "chunk_length must be an integer >= 1, got 0"),
        ({"chunk_length": 2.0}, "chunk_length must be an integer"),
        ({"num_chunks_before": -1}, "num_chunks_before must be an integer >= 0, got -1"),
        ({"num_chunks_after": True}, "num_chunks_after must be an integer >= 0"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("local", HIDDEN, HEADS, **opts)
