"""Chunked local attention against dense attention under its pattern and Hugging Face's layer.

The invariants every mechanism owes (padding, batch = alone, causality, determinism,
gradcheck) run on the "local" configurations in cases.py.
"""

from __future__ import annotations

import pytest
import torch
from reference import layer_with_mask

from longseq import attention
from longseq.attention import ops, patterns
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


def naive_pattern(n, c, before, after, causal, wrap_chunks):
    """The pattern with Python loops: the chunks a query's window lists, by index."""
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
    {"chunk_length": 4, "wrap": True},  # 5 chunks > window: no chunk twice
    {"chunk_length": 3, "num_chunks_after": 1, "wrap": True, "causal": True},
    {"chunk_length": 4, "wrap": True, "pad_multiple": 8},
    {"chunk_length": 32},  # one chunk: dense
]


def opts_id(o):
    return "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("opts", CONFIGS, ids=opts_id)
def test_pattern_matches_naive_loops(opts):
    layer = make(**opts)
    n = 18
    padded = layer.padded_length(n)
    wrap = padded // layer.chunk_length if layer.wraps(padded) else None
    expected = naive_pattern(
        n,
        layer.chunk_length,
        layer.num_chunks_before,
        layer.num_chunks_after,
        layer.causal,
        wrap,
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
    """A window one chunk wider, or wrapping, changes the output: the pattern is not moot."""
    x, real = padded_batch([16], 16)
    layer = make(chunk_length=4)
    ours = layer(x, attention_mask=real)
    wider = patterns.materialize(patterns.chunked_local(4, before=2), 16)
    assert not torch.allclose(ours, layer_with_mask(layer, x, wider, real), atol=1e-6)
    wrapped = make(chunk_length=4, wrap=True)
    wrapped.load_state_dict(layer.state_dict())
    assert not torch.allclose(ours[:, :4], wrapped(x)[:, :4], atol=1e-6)
    torch.testing.assert_close(ours[:, 4:], wrapped(x)[:, 4:], **TOL)


def test_pad_multiple_matters_only_when_wrapping():
    x, real = padded_batch([10], 10)
    a, b = make(chunk_length=4), make(chunk_length=4, pad_multiple=16)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x, attention_mask=real), b(x, attention_mask=real), **TOL)
    a, b = make(chunk_length=4, wrap=True), make(chunk_length=4, wrap=True, pad_multiple=16)
    b.load_state_dict(a.state_dict())
    # padded to 12, chunk 0 sees positions 8, 9 (real); padded to 16, only padding
    assert not torch.allclose(a(x, attention_mask=real), b(x, attention_mask=real), atol=1e-6)


def test_wrap_gradcheck_with_dropout():
    layer = make(chunk_length=3, num_chunks_after=1, wrap=True, dropout=0.2).train()
    x = torch.randn(2, 8, HIDDEN, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0

    def run(t):
        torch.manual_seed(3)
        return layer(t, attention_mask=mask)

    assert not torch.allclose(run(x), layer.eval()(x, attention_mask=mask))
    layer.train()
    assert torch.autograd.gradcheck(run, (x,), fast_mode=True)


HF_CASES = [
    {"n": 16, "c": 4, "before": 1, "after": 0, "causal": False},
    {"n": 16, "c": 4, "before": 1, "after": 0, "causal": True},
    {"n": 12, "c": 4, "before": 2, "after": 1, "causal": False},  # a chunk twice per window
    {"n": 8, "c": 4, "before": 1, "after": 1, "causal": True},  # causal sees chunk 0 wrapped
    {"n": 6, "c": 8, "before": 1, "after": 0, "causal": False},  # one chunk: plain attention
]


@pytest.mark.parametrize("case", HF_CASES, ids=opts_id)
def test_wrap_matches_hugging_face(case):
    """With wrap, equal to Hugging Face's LocalSelfAttention at every real token (padding in
    one row, left padding in another); without wrap, different wherever wrapping shows."""
    reformer = pytest.importorskip("transformers.models.reformer.modeling_reformer")
    from transformers import ReformerConfig

    n, c, before, after, causal = case.values()
    config = ReformerConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        attention_head_size=HIDDEN // HEADS,
        local_attn_chunk_length=c,
        local_num_chunks_before=before,
        local_num_chunks_after=after,
        is_decoder=causal,
        local_attention_probs_dropout_prob=0.0,
    )
    hf = reformer.LocalSelfAttention(config).double().eval()
    opts = {
        "chunk_length": c,
        "num_chunks_before": before,
        "num_chunks_after": after,
        "causal": causal,
        "bias": False,
    }
    ours = make(wrap=True, **opts)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(ours, name).weight.copy_(getattr(hf, name).weight)
    x, real = padded_batch([n, n - 3, n - 1], n)
    real[2, :1] = False
    expected = hf(x, attention_mask=real.long()).hidden_states
    ctx = ops.merge_heads(ours.attend(x, real, None))
    torch.testing.assert_close(ctx[real], expected[real], **TOL)
    plain = make(**opts)
    plain.load_state_dict(ours.state_dict())
    ctx_plain = ops.merge_heads(plain.attend(x, real, None))
    if n > c and (after > 0 or not causal):
        assert not torch.allclose(ctx_plain[real], expected[real], atol=1e-6)
    else:  # one chunk, or causal without look-ahead: what wraps is in the future, masked
        torch.testing.assert_close(ctx_plain[real], expected[real], **TOL)


def test_never_builds_n_by_n():
    from test_no_quadratic import LargestTensor, N

    for wrap in (False, True):
        layer = attention.build("local", 32, 2, chunk_length=64, num_chunks_after=1, wrap=wrap)
        x = torch.randn(1, N, 32, requires_grad=True)
        mask = torch.ones(1, N, dtype=torch.long)
        mask[:, -100:] = 0
        with LargestTensor() as watch:
            layer(x, attention_mask=mask).sum().backward()
        assert watch.largest < N * N // 4


def test_options_and_registry():
    assert attention.get("local") is LocalAttention
    assert attention.options("local") == {
        "chunk_length": 64,
        "num_chunks_before": 1,
        "num_chunks_after": 0,
        "wrap": False,
        "pad_multiple": None,
        "causal": False,
        "dropout": 0.0,
        "bias": True,
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
        ({"wrap": "yes"}, "wrap must be True or False"),
        ({"chunk_length": 4, "pad_multiple": 6}, "pad_multiple must be a positive multiple"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("local", HIDDEN, HEADS, **opts)
