"""Longformer attention against dense attention under its pattern, and against Hugging Face."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import dense_attention

from longseq import attention
from longseq.attention import longformer, ops, patterns
from longseq.layers import positions as positions_mod

HIDDEN, HEADS = 16, 2

# (MIN_BLOCK, MAX_BLOCK) of the kernel: the default, blocks of one token, blocks of 3 tokens
# (dividing nothing), and c = w/2
BLOCKS = {
    "default": (longformer.MIN_BLOCK, longformer.MAX_BLOCK),
    "c1": (1, 1),
    "c3": (3, 3),
    "half": (1, 10**6),
}


@pytest.fixture(params=list(BLOCKS))
def block(request, monkeypatch):
    lo, hi = BLOCKS[request.param]
    monkeypatch.setattr(longformer, "MIN_BLOCK", lo)
    monkeypatch.setattr(longformer, "MAX_BLOCK", hi)
    return request.param


def build(**opts):
    return attention.build("longformer", HIDDEN, HEADS, **opts).double()


def reference(layer, x, real, glob, window=None):
    """Dense attention under patterns.longformer (+ key padding); global rows recomputed densely
    with the global projections over all real keys (bidirectional; causal, global tokens are
    sinks and their rows ordinary causal rows). `global_tokens`: the first G real tokens."""
    q, k, v = layer.project(x)
    b, n = real.shape
    if layer.global_tokens:
        first = (torch.arange(n) < layer.global_tokens) & real
        glob = first if glob is None else glob | first
    w = layer.window if window is None else window
    allowed = (
        torch.stack(
            [
                patterns.longformer(
                    n,
                    w,
                    layer.dilations,
                    layer.causal,
                    None if glob is None else glob[i],
                    layer.num_heads,
                )
                for i in range(b)
            ]
        )
        & real[:, None, None, :]
    )
    ctx = dense_attention(q, k, v, allowed)
    if glob is not None and not layer.causal:
        h = layer.num_heads
        qg = ops.split_heads(layer.query_global(x), h) * layer.head_dim**-0.5
        kg = ops.split_heads(layer.key_global(x), h)
        vg = ops.split_heads(layer.value_global(x), h)
        ctx = torch.where(
            glob[:, None, :, None], dense_attention(qg, kg, vg, real[:, None, None, :]), ctx
        )
    return layer.out(ops.merge_heads(ctx)).masked_fill(~real[..., None], 0.0)


def inputs(n, lengths, globals_per_seq=()):
    """x (B, n, HIDDEN), real (B, n) from sequence lengths, glob (B, n) or None."""
    b = len(lengths)
    x = torch.randn(b, n, HIDDEN, dtype=torch.float64)
    real = torch.arange(n) < torch.tensor(lengths)[:, None]
    glob = None
    if any(globals_per_seq):
        glob = torch.zeros(b, n, dtype=torch.bool)
        for i, g in enumerate(globals_per_seq):
            glob[i, torch.randperm(lengths[i])[:g]] = True
    return x, real, glob


def grads(layer, x, out, weight):
    wrt = [x, *layer.parameters()]
    gs = torch.autograd.grad((out * weight).sum(), wrt, allow_unused=True)
    # an unused parameter (key_global's bias: a constant per softmax row) has zero gradient
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, wrt, strict=True)]


CONFIGS = [
    # n, lengths, options, globals per sequence
    (23, [23], {"window": 4}, ()),
    (37, [37, 30], {"window": 6, "dilation": [1, 2]}, (2, 1)),
    (50, [50, 41, 17], {"window": 8, "dilation": 3, "causal": True}, ()),
    (9, [9, 6], {"window": 20}, (1, 0)),  # n < window
    (64, [64, 57, 33], {"window": 8, "dilation": [2, 1]}, (3, 0, 2)),
    (40, [40, 25], {"window": 2, "causal": True, "bias": False}, ()),
    (31, [31, 28], {"window": 4, "dilation": 2, "bias": False}, (9, 8)),  # G * heads >= hidden
    (1, [1], {"window": 2}, ()),
    (150, [150, 97], {"window": 6}, (2, 1)),  # several default-sized blocks
    # causal global tokens are sinks: seen by the queries after them, rows causal
    (50, [50, 41, 17], {"window": 8, "dilation": 3, "causal": True}, (2, 1, 3)),
    (30, [30, 2], {"window": 4, "causal": True, "global_tokens": 3}, ()),
    (70, [70, 66], {"window": 6, "dilation": [1, 2], "causal": True, "global_tokens": 4}, (1, 0)),
    (20, [20, 9], {"window": 4, "global_tokens": 2}, (0, 1)),  # bidirectional: global rows
]


@pytest.mark.parametrize("block", ["default", "c1", "c3"], indirect=True)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"n{c[0]}-{c[2]}-g{list(c[3])}")
def test_equals_dense_attention_under_the_pattern(cfg, block):
    n, lengths, opts, globs = cfg
    layer = build(**opts)
    x, real, glob = inputs(n, lengths, globs)
    x.requires_grad_(True)
    out = layer(x, attention_mask=real, global_attention_mask=glob)
    expected = reference(layer, x, real, glob)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(out)
    fast, dense = grads(layer, x, out, weight), grads(layer, x, expected, weight)
    for got, want in zip(fast, dense, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_a_wrong_pattern_is_detected():
    layer = build(window=4, dilation=[1, 2])
    x, real, glob = inputs(30, [30], (1,))
    out = layer(x, global_attention_mask=glob)
    assert not torch.allclose(out, reference(layer, x, real, glob, window=6), atol=1e-3)
    assert not torch.allclose(out, reference(layer, x, real, None), atol=1e-3)


def test_global_rows_use_the_global_projections():
    layer = build(window=4)
    x, _, glob = inputs(20, [20], (2,))
    before = layer(x, global_attention_mask=glob)
    with torch.no_grad():
        for lin in (layer.query_global, layer.key_global, layer.value_global):
            lin.weight.add_(0.5 * torch.randn_like(lin.weight))
    after = layer(x, global_attention_mask=glob)
    changed = (after - before).abs().amax(-1) > 1e-6
    assert torch.equal(changed, glob), "exactly the global rows depend on the global projections"


@pytest.mark.parametrize("block", ["c1", "c3", "half", "default"], indirect=True)
def test_batch_equals_each_sequence_alone(block):
    layer = build(window=6, dilation=[3, 1])
    lengths = [29, 7, 18, 25]
    x, real, glob = inputs(29, lengths, (2, 1, 0, 3))
    batched = layer(x, attention_mask=real, global_attention_mask=glob)
    for i, n in enumerate(lengths):
        g = glob[i : i + 1, :n] if glob[i].any() else None
        alone = layer(x[i : i + 1, :n], global_attention_mask=g)
        torch.testing.assert_close(batched[i : i + 1, :n], alone, rtol=1e-9, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    half=st.integers(1, 6),
    dilation=st.sampled_from([1, 2, 3, [1, 3], [2, 2]]),
    causal=st.booleans(),
    pad=st.integers(0, 5),
    glob=st.booleans(),
    blocks=st.sampled_from(list(BLOCKS.values())),
)
def test_property_equals_dense(n, half, dilation, causal, pad, glob, blocks):
    old = longformer.MIN_BLOCK, longformer.MAX_BLOCK
    longformer.MIN_BLOCK, longformer.MAX_BLOCK = blocks
    try:
        layer = build(window=2 * half, dilation=dilation, causal=causal)
        x, real, g = inputs(n + pad, [n, max(1, n - pad)], (1, 2) if glob else (0,))
        out = layer(x, attention_mask=real, global_attention_mask=g)
        torch.testing.assert_close(out, reference(layer, x, real, g), rtol=1e-10, atol=1e-10)
    finally:
        longformer.MIN_BLOCK, longformer.MAX_BLOCK = old


def test_pattern():
    layer = build(window=4, dilation=[1, 2])
    p = layer.pattern(20)
    assert p.shape == (2, 20, 20)
    assert p[0, 10].nonzero().flatten().tolist() == [8, 9, 10, 11, 12]
    assert p[1, 10].nonzero().flatten().tolist() == [6, 8, 10, 12, 14]
    glob = torch.zeros(20, dtype=torch.bool)
    glob[3] = True
    pg = layer.pattern(20, glob)
    assert pg[:, 3].all() and pg[:, :, 3].all()
    assert torch.equal(pg, patterns.longformer(20, 4, [1, 2], False, glob, 2))
    causal = build(window=4, dilation=2, causal=True).pattern(20)
    assert causal[1, 10].nonzero().flatten().tolist() == [6, 8, 10]


def test_dropout_only_in_training():
    layer = build(window=4, dropout=0.5)
    x, _, glob = inputs(24, [24], (1,))
    layer.eval()
    assert torch.equal(layer(x, global_attention_mask=glob), layer(x, global_attention_mask=glob))
    layer.train()
    torch.manual_seed(1)
    a = layer(x, global_attention_mask=glob)
    assert torch.isfinite(a).all()
    assert not torch.allclose(a, layer(x, global_attention_mask=glob))


# --- Hugging Face parity ---------------------------------------------------------------------


def hf_layer(layer):
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    cfg = LongformerConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        attention_window=[layer.window],
        attention_probs_dropout_prob=0.0,
    )
    hf = LongformerSelfAttention(cfg, layer_id=0).eval()
    names = ["query", "key", "value", "query_global", "key_global", "value_global"]
    with torch.no_grad():
        for name in names:
            getattr(hf, name).weight.copy_(getattr(layer, name).weight)
            getattr(hf, name).bias.copy_(getattr(layer, name).bias)
    return hf


def hf_context(hf, x, real, glob):
    """HF's per-head context (B, N, hidden), fed the way LongformerModel feeds its layers."""
    mask = torch.zeros(real.shape, dtype=x.dtype)
    mask[~real] = -10000.0
    if glob is not None:
        mask[glob] = 10000.0
    return hf(
        x,
        attention_mask=mask,
        is_index_masked=mask < 0,
        is_index_global_attn=mask > 0,
        is_global_attn=glob is not None,
    )[0]


@pytest.mark.parametrize("block", ["default", "c1"], indirect=True)
@pytest.mark.parametrize(
    "window, n, lengths, globs",
    [
        (4, 16, [16], ()),
        (4, 16, [16, 11], (1, 2)),
        (6, 18, [18, 13, 7], ()),
        (10, 20, [20, 9], (3, 1)),  # (HF fails for window 2)
        (8, 24, [24, 20], (0, 1)),
    ],
)
def test_matches_hugging_face(window, n, lengths, globs, block):
    torch.manual_seed(3)
    layer = attention.build("longformer", HIDDEN, HEADS, window=window).eval()
    hf = hf_layer(layer)
    x, real, glob = inputs(n, lengths, globs)
    x = x.float().requires_grad_(True)
    ours = ops.merge_heads(layer.attend(x, real, glob))
    theirs = hf_context(hf, x, real, glob)
    r = real[..., None]
    torch.testing.assert_close(ours * r, theirs * r, rtol=1e-5, atol=1e-5)
    weight = torch.randn_like(ours) * r
    (g_ours,) = torch.autograd.grad((ours * weight).sum(), x)
    (g_hf,) = torch.autograd.grad((theirs * weight).sum(), x)
    torch.testing.assert_close(g_ours, g_hf, rtol=1e-4, atol=1e-5)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [3, 0, -2, 1, 4.0, True])
def test_bad_window(window):
    with pytest.raises(ValueError, match=r"window must be an even int >= 2"):
        attention.build("longformer", HIDDEN, HEADS, window=window)


@pytest.mark.parametrize(
    "dilation, match",
    [
        ([1, 2, 3], r"dilation has 3 values but the layer has num_heads=2"),
        ([1], r"dilation has 1 values"),
        (0, r"dilation values must be ints >= 1"),
        ([1, 0], r"dilation values must be ints >= 1"),
        ([1, 1.5], r"dilation values must be ints >= 1"),
        ("2", r"dilation must be an int or a sequence of ints"),
    ],
)
def test_bad_dilation(dilation, match):
    with pytest.raises(ValueError, match=match):
        attention.build("longformer", HIDDEN, HEADS, window=4, dilation=dilation)


def test_causal_global_tokens_are_sinks():
    """Causal: the sinks use the ordinary projections (the global ones change nothing), a
    query far past the window still reads them, and a sink's row never sees the future."""
    layer = build(window=2, causal=True, global_tokens=2)
    x = torch.randn(1, 12, HIDDEN, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    (g,) = torch.autograd.grad(out[0, 11].sum(), x, retain_graph=True)
    assert g[0, :2].abs().amax(-1).gt(0).all() and torch.all(g[0, 2:10] == 0)
    (g,) = torch.autograd.grad(out[0, 0].sum(), x)
    assert torch.all(g[0, 1:] == 0)
    with torch.no_grad():
        for lin in (layer.query_global, layer.key_global, layer.value_global):
            lin.weight.add_(0.5 * torch.randn_like(lin.weight))
    assert torch.equal(layer(x), out)
    pattern = layer.pattern(12)[0]
    assert pattern[11].nonzero().flatten().tolist() == [0, 1, 10, 11]
    assert pattern[1].nonzero().flatten().tolist() == [0, 1]
    with pytest.raises(ValueError, match="global_tokens must be an integer >= 0"):
        build(window=2, global_tokens=-1)


def streaming_reference(layer, x, rotary):
    """StreamingLLM's rule read literally, query by query: the cache holds the sinks
    0..G-1 and the band's keys, in position order, and rotary positions are cache slots
    0, 1, .. (the query at the last); softmax over the cache. Independent of the kernel."""
    n, g, half = x.shape[1], layer.global_tokens, layer.window // 2
    q = ops.split_heads(layer.query(x), layer.num_heads) * layer.head_dim**-0.5
    k = ops.split_heads(layer.key(x), layer.num_key_value_heads)
    v = ops.split_heads(layer.value(x), layer.num_key_value_heads)
    k, v = ops.repeat_kv(k, layer.kv_groups), ops.repeat_kv(v, layer.kv_groups)
    rows = []
    for i in range(n):
        keys = sorted(set(range(min(g, i + 1))) | set(range(max(0, i - half), i + 1)))
        idx = torch.tensor(keys)
        slots = torch.arange(len(keys))
        cos, sin = rotary.cos_sin(len(keys), dtype=x.dtype)
        kr = positions_mod.apply_rotary(k[:, :, idx], cos[slots], sin[slots])
        qr = positions_mod.apply_rotary(q[:, :, i : i + 1], cos[-1:], sin[-1:])
        p = torch.softmax(qr @ kr.transpose(-1, -2), -1)
        rows.append(p @ v[:, :, idx])
    return layer.out(ops.merge_heads(torch.cat(rows, 2)))


@pytest.mark.parametrize("kv", [2, 1])
def test_sinks_at_cache_positions_are_streaming_llm(block, kv):
    """sink_positions="cache": every query scores the sinks as if they sat just before its
    window (StreamingLLM), against the literal per-query cache above; "absolute" differs
    once a query is past G + w/2, and is the same before."""
    torch.manual_seed(0)
    rotary = positions_mod.RotaryEmbedding(HIDDEN // HEADS, base=10.0)  # fast angles
    opts = dict(window=4, causal=True, global_tokens=3, num_key_value_heads=kv)
    layer = build(sink_positions="cache", **opts).eval()
    layer.rotary = rotary
    x = torch.randn(1, 23, HIDDEN, dtype=torch.float64)
    out = layer(x)
    torch.testing.assert_close(out, streaming_reference(layer, x, rotary), rtol=1e-10, atol=1e-10)
    absolute = build(**opts).eval()
    absolute.load_state_dict(layer.state_dict())
    absolute.rotary = rotary
    ref = absolute(x)
    cap = layer.sink_cap
    assert cap == 3 + 2
    torch.testing.assert_close(out[:, : cap + 1], ref[:, : cap + 1], rtol=1e-12, atol=1e-12)
    assert (out[0, cap + 1 :] - ref[0, cap + 1 :]).abs().amax(-1).gt(1e-3).all()


def test_sink_positions_errors():
    with pytest.raises(ValueError, match="unknown sink_positions 'rolling'"):
        build(window=4, causal=True, global_tokens=2, sink_positions="rolling")
    with pytest.raises(ValueError, match="needs causal=True and global_tokens > 0"):
        build(window=4, global_tokens=2, sink_positions="cache")
    with pytest.raises(ValueError, match="needs causal=True and global_tokens > 0"):
        build(window=4, causal=True, sink_positions="cache")
    with pytest.raises(ValueError, match="backend='native' only"):
        build(window=4, causal=True, global_tokens=2, sink_positions="cache", backend="flex")
    layer = build(window=4, causal=True, global_tokens=2, sink_positions="cache")
    layer.rotary = positions_mod.RotaryEmbedding(HIDDEN // HEADS)
    glob = torch.zeros(1, 12, dtype=torch.long)
    glob[0, 8] = 1
    with pytest.raises(ValueError, match="global_attention_mask marking other tokens"):
        layer(torch.randn(1, 12, HIDDEN, dtype=torch.float64), global_attention_mask=glob)
    real = torch.ones(1, 4, dtype=torch.bool)  # refused before the shard is read
    with pytest.raises(ValueError, match="no sequence-parallel form"):
        layer.attend_sharded(torch.zeros(1, 4, HIDDEN, dtype=torch.float64), real, None, None)


def test_global_rows_under_bf16_autocast():
    """The band and the global rows meet in one tensor; under autocast they must agree in dtype."""
    torch.manual_seed(0)
    layer = attention.build("longformer", 16, 2, window=4).eval()
    x = torch.randn(2, 20, 16)
    glob = torch.zeros(2, 20, dtype=torch.long)
    glob[:, 0] = 1
    ref = layer(x, global_attention_mask=glob)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, global_attention_mask=glob)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
