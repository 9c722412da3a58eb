"""BigBird against its pattern: dense attention under the mask from patterns.bigbird."""

from __future__ import annotations

import pytest
import torch
from reference import layer_with_mask

from longseq import attention
from longseq.attention import ops, patterns

HID, HEADS = 12, 3


def make(**opts):
    return attention.build("bigbird", HID, HEADS, **opts).double()


def reference(layer, x, lengths):
    """Dense attention under each sequence's own pattern (its real length), padding zeroed."""
    bsz, n, _ = x.shape
    extra = 0 if layer.global_states is None else layer.global_states.shape[0]
    xs = x if not extra else torch.cat([layer.global_states[None].expand(bsz, -1, -1), x], 1)
    allowed = torch.zeros(bsz, HEADS, extra + n, extra + n, dtype=torch.bool)
    for i, length in enumerate(lengths):
        allowed[i, :, : extra + length, : extra + length] = layer.pattern(length)
    real = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    return layer_with_mask(layer, xs, allowed)[:, extra:].masked_fill(~real[..., None], 0.0), real


def check_layer(layer, lengths, n=None):
    n = n or max(lengths)
    x = torch.randn(len(lengths), n, HID, dtype=torch.float64, requires_grad=True)
    expected, real = reference(layer, x, lengths)
    out = layer(x, attention_mask=real)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    params = [x, *layer.parameters()]
    got = torch.autograd.grad(out, params, g)
    want = torch.autograd.grad(expected, params, g)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    return out, expected


CONFIGS = [
    dict(block_size=2),
    dict(block_size=3, num_random_blocks=1),
    dict(block_size=4, num_random_blocks=2, num_global_blocks=1),
    dict(block_size=2, num_random_blocks=3, num_global_blocks=3, num_sliding_blocks=5),
    dict(block_size=3, num_random_blocks=0, num_global_blocks=0, num_sliding_blocks=1),
    dict(block_size=5, num_random_blocks=2, num_global_blocks=4, seed=7, layer_idx=3),
    dict(block_size=1, num_random_blocks=2, num_sliding_blocks=3),
]


@pytest.mark.parametrize("variant", ["itc", "etc"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("opts", CONFIGS, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_equals_dense_under_pattern(opts, causal, variant):
    """Forward and gradients (input and every parameter), padded batch, partial last block."""
    layer = make(variant=variant, causal=causal, **opts)
    b = opts["block_size"]
    check_layer(layer, [9 * b + 1, 4 * b - 1])


@pytest.mark.parametrize("variant", ["itc", "etc"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 7, 8, 9, 12])
def test_very_short_sequences(length, causal, variant):
    """1, 2, 3 blocks and partial blocks: the block code runs (no dense fallback) and is exact."""
    layer = make(block_size=4, num_random_blocks=2, variant=variant, causal=causal)
    check_layer(layer, [length])


def test_sparse_for_long_enough_sequences():
    """The kernel really is sparse: fewer pairs than n^2, and it differs from full attention."""
    b, n = 4, 96
    layer = make(block_size=b).eval()
    mask = layer.pattern(n)
    lay = layer.layout(n // b)
    scored = int(lay.valid.sum()) * b * b + len(lay.global_blocks) * b * n * HEADS
    assert scored == int(mask.sum()) < HEADS * n * n / 2
    x = torch.randn(1, n, HID, dtype=torch.float64)
    full = layer_with_mask(layer, x, torch.ones(n, n, dtype=torch.bool))
    assert (layer(x) - full).abs().max() > 1e-3


def test_a_wrong_pattern_gives_a_different_result():
    layer = make(block_size=2, num_random_blocks=2, num_global_blocks=2).eval()
    n = 30
    x = torch.randn(1, n, HID, dtype=torch.float64)
    mask = layer.pattern(n).clone()
    torch.testing.assert_close(layer(x), layer_with_mask(layer, x, mask), rtol=1e-10, atol=1e-10)
    lay = layer.layout(n // 2)
    i = 5  # a non-global query block: drop its first random block in head 0
    j = int(lay.index[0, i, -2])
    assert lay.valid[0, i, -2]
    mask[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = False
    assert (layer(x) - layer_with_mask(layer, x, mask)).abs().max() > 1e-6


def test_itc_global_blocks_are_first_and_last_real_blocks():
    lay = patterns.bigbird_layout(10, num_heads=1, num_global_blocks=2)
    assert lay.global_blocks.tolist() == [0, 9]
    lay = patterns.bigbird_layout(10, num_heads=1, num_global_blocks=3)
    assert lay.global_blocks.tolist() == [0, 1, 9]
    lay = patterns.bigbird_layout(10, num_heads=1, num_global_blocks=3, causal=True)
    assert lay.global_blocks.tolist() == [0, 1, 2]
    lay = patterns.bigbird_layout(1, num_heads=1, num_global_blocks=2)
    assert lay.global_blocks.tolist() == [0]
    lay = patterns.bigbird_layout(10, num_heads=1, num_global_blocks=2, variant="etc")
    assert lay.global_blocks.tolist() == [0, 1] and lay.index.shape[1] == 12


LAYOUTS = [
    dict(num_random_blocks=3, num_global_blocks=2, num_sliding_blocks=3),
    dict(num_random_blocks=5, num_global_blocks=3, num_sliding_blocks=5),
    dict(num_random_blocks=2, num_global_blocks=0, num_sliding_blocks=1),
    dict(num_random_blocks=4, num_global_blocks=2, num_sliding_blocks=3, variant="etc"),
]


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("opts", LAYOUTS, ids=str)
@pytest.mark.parametrize("nb_real", [1, 2, 3, 5, 8, 20])
def test_layout_properties(nb_real, opts, causal):
    lay = patterns.bigbird_layout(nb_real, num_heads=4, causal=causal, **opts)
    g, r = opts["num_global_blocks"], opts["num_random_blocks"]
    s = (opts["num_sliding_blocks"] - 1) // 2
    extra = g if opts.get("variant") == "etc" else 0
    nb = extra + nb_real
    glob = set(lay.global_blocks.tolist())
    assert lay.index.shape[:2] == (4, nb) and len(glob) == min(g, nb)
    assert lay.index.shape[2] == (s + 1 if causal else 2 * s + 1) + g + r
    for h in range(4):
        for i in range(nb):
            slots = lay.index[h, i][lay.valid[h, i]].tolist()
            if i in glob:
                assert slots == []
                continue
            assert len(slots) == len(set(slots)), "duplicate key block"
            assert all(0 <= j < nb for j in slots)
            window = {j for j in range(i - s, i + (0 if causal else s) + 1) if 0 <= j < nb}
            assert set(slots) >= window | glob
            rnd = lay.index[h, i, -r:][lay.valid[h, i, -r:]].tolist() if r else []
            assert not set(rnd) & (window | glob | {i})
            if causal:
                assert all(j <= i for j in slots) and all(j < i - s for j in rnd)
            pool = {j for j in range(extra, nb) if j not in window | glob}
            if causal:
                pool = {j for j in pool if j < i - s}
            assert len(rnd) == min(r, len(pool)), "takes r blocks, or all when fewer"


def test_random_blocks_are_seeded_per_head_layer_and_seed():
    def rnd(**kw):
        return patterns.bigbird_layout(64, num_heads=4, num_random_blocks=3, **kw).index[..., -3:]

    base = rnd(seed=1, layer_idx=2)
    assert torch.equal(base, rnd(seed=1, layer_idx=2)), "not deterministic"
    assert not torch.equal(base[0], base[1]), "heads draw the same blocks"
    assert not torch.equal(base, rnd(seed=1, layer_idx=3)), "layers draw the same blocks"
    assert not torch.equal(base, rnd(seed=2, layer_idx=2)), "seed has no effect"
    # Many chunks of rows (> 256 blocks): still deterministic and distinct across chunks.
    long = patterns.bigbird_layout(600, num_heads=1, num_random_blocks=3)
    assert torch.equal(long.index, patterns.bigbird_layout(600, num_heads=1).index)


def test_layer_uses_its_seed_and_layer_idx():
    x = torch.randn(1, 40, HID, dtype=torch.float64)
    a, b, c = (make(block_size=2, **kw).eval() for kw in ({}, {"seed": 1}, {"layer_idx": 1}))
    b.load_state_dict(a.state_dict())
    c.load_state_dict(a.state_dict())
    assert (a(x) - b(x)).abs().max() > 1e-6 and (a(x) - c(x)).abs().max() > 1e-6


@pytest.mark.parametrize("variant", ["itc", "etc"])
@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_batch_of_different_lengths_equals_each_alone(causal, variant):
    layer = make(block_size=3, num_random_blocks=2, variant=variant, causal=causal).eval()
    lengths = [40, 7, 23, 1, 40]
    x = torch.randn(len(lengths), max(lengths), HID, dtype=torch.float64)
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    out = layer(x, attention_mask=mask)
    for i, length in enumerate(lengths):
        alone = layer(x[i : i + 1, :length])
        torch.testing.assert_close(out[i : i + 1, :length], alone, rtol=1e-10, atol=1e-10)
        assert torch.all(out[i, length:] == 0)


def test_all_padding_tail_is_trimmed_but_shape_kept():
    layer = make(block_size=4).eval()
    x = torch.randn(2, 30, HID, dtype=torch.float64)
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[0, :9] = mask[1, :13] = True
    out = layer(x, attention_mask=mask)
    assert out.shape == x.shape
    torch.testing.assert_close(out[1:, :13], layer(x[1:, :13]), rtol=1e-10, atol=1e-10)


def test_train_and_eval_draw_the_same_blocks():
    layer = make(block_size=2, num_random_blocks=2)
    x = torch.randn(2, 30, HID, dtype=torch.float64)
    torch.testing.assert_close(layer.train()(x), layer.eval()(x), rtol=0, atol=0)


def test_dropout_in_training_only_and_its_gradients():
    layer = make(block_size=2, num_random_blocks=2, dropout=0.3)
    x = torch.randn(1, 12, HID, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 12, dtype=torch.bool)
    mask[0, 11:] = False
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert (layer(x) - layer(x)).abs().max() > 1e-6

    def seeded(t):
        torch.manual_seed(0)
        return layer(t, attention_mask=mask)

    assert torch.autograd.gradcheck(seeded, (x,), fast_mode=True)


def test_etc_global_states_are_learned():
    layer = make(block_size=3, num_global_blocks=2, variant="etc")
    assert tuple(layer.global_states.shape) == (6, HID)
    assert layer.pattern(10).shape == (HEADS, 16, 16)
    layer(torch.randn(1, 20, HID, dtype=torch.float64)).sum().backward()
    assert layer.global_states.grad.abs().sum() > 0
    assert make(variant="itc").global_states is None


def test_gradcheck_etc_causal():
    layer = make(block_size=2, num_random_blocks=1, num_global_blocks=1, variant="etc", causal=True)
    x = torch.randn(1, 9, HID, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,))


def test_float32_matches_float64():
    layer = make(block_size=4, num_random_blocks=2)
    x = torch.randn(2, 37, HID, dtype=torch.float64)
    want = layer(x)
    got = layer.float()(x.float())
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_mask_bias():
    allowed = torch.tensor([[True, False], [False, True]])
    scores = torch.zeros(2, 2)
    torch.testing.assert_close(
        torch.softmax(scores + ops.mask_bias(allowed, scores.dtype), -1), allowed.float()
    )


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"block_size": 0}, "block_size must be an integer >= 1, got 0"),
        ({"block_size": 2.5}, "block_size must be an integer"),
        ({"num_sliding_blocks": 4}, "num_sliding_blocks must be odd"),
        ({"num_sliding_blocks": 0}, "num_sliding_blocks must be an integer >= 1"),
        ({"num_random_blocks": -1}, "num_random_blocks must be an integer >= 0, got -1"),
        ({"num_global_blocks": -2}, "num_global_blocks must be an integer >= 0"),
        ({"variant": "full"}, r"variant must be one of \('itc', 'etc'\), got 'full'"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"layer_idx": -1}, "layer_idx must be an integer >= 0"),
        ({"num_random_blocks": True}, "num_random_blocks must be an integer"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("bigbird", HID, HEADS, **opts)


def test_global_attention_mask_is_rejected():
    layer = make(block_size=2)
    glob = torch.zeros(1, 8, dtype=torch.long)
    glob[0, 3] = 1
    with pytest.raises(ValueError, match="has no global tokens"):
        layer(torch.randn(1, 8, HID, dtype=torch.float64), global_attention_mask=glob)
    with pytest.raises(ValueError, match="globals are blocks"):
        layer.pattern(8, glob[0].bool())


def test_global_rows_in_another_dtype_than_the_kernel(monkeypatch):
    """Under CUDA autocast the dense global rows (SDPA) come out in half precision while the
    block kernel runs in fp32; they must still meet in one tensor (seen failing on an H100)."""
    from longseq.attention import bigbird

    layer = attention.build("bigbird", 16, 2, block_size=4, num_random_blocks=1).eval()
    x = torch.randn(2, 32, 16)
    ref = layer(x)
    sdpa = bigbird.F.scaled_dot_product_attention

    def half_sdpa(*args, **kwargs):
        return sdpa(*args, **kwargs).to(torch.bfloat16)

    monkeypatch.setattr(bigbird.F, "scaled_dot_product_attention", half_sdpa)
    out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0.02, atol=0.02)


@pytest.mark.parametrize("opts", LAYOUTS, ids=str)
def test_causal_layout_of_a_prefix_is_the_prefix_of_the_layout(opts):
    """Causal random blocks do not depend on the sequence's length (prefix stability)."""
    long = patterns.bigbird_layout(24, num_heads=3, causal=True, **opts)
    extra = opts["num_global_blocks"] if opts.get("variant") == "etc" else 0
    for nb_real in (1, 4, 9, 17):
        short = patterns.bigbird_layout(nb_real, num_heads=3, causal=True, **opts)
        rows = extra + nb_real
        assert torch.equal(short.index, long.index[:, :rows])
        assert torch.equal(short.valid, long.valid[:, :rows])
    # the random blocks differ between rows, heads and layers (they are drawn, not fixed)
    other = patterns.bigbird_layout(24, num_heads=3, causal=True, layer_idx=1, **opts)
    if opts["num_random_blocks"]:
        assert not torch.equal(long.index, other.index)


@pytest.mark.parametrize("variant", ["itc", "etc"])
def test_causal_output_depends_on_the_past_only(variant):
    """Output at t of the whole sequence == output of the first t+1 tokens alone, and changing
    later tokens moves nothing before them."""
    torch.manual_seed(0)
    layer = make(block_size=4, num_random_blocks=2, causal=True, variant=variant).eval()
    x = torch.randn(1, 44, HID, dtype=torch.double)
    whole = layer(x)
    for t in (1, 5, 8, 13, 27, 43):
        assert torch.allclose(layer(x[:, : t + 1]), whole[:, : t + 1], atol=1e-12, rtol=0)
    y = x.clone()
    y[:, 30:] = torch.randn(1, 14, HID, dtype=torch.double)
    assert torch.allclose(layer(y)[:, :30], whole[:, :30], atol=1e-12, rtol=0)


def test_causal_global_blocks_are_attention_sinks():
    """Causal BigBird's global blocks are its first num_global_blocks blocks, seen by every
    later query with the ordinary projections: without random blocks, exactly the mask
    causal & (sliding blocks | j < g * block_size), the window + sinks mask of a decoder."""
    from longseq.models import ModelConfig

    b, g = 4, 2
    layer = attention.build(
        "bigbird", 16, 2, block_size=b, num_random_blocks=0, num_global_blocks=g, causal=True
    )
    n = 41
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    want = (j <= i) & ((i // b - j // b <= 1) | (j < g * b))
    assert torch.equal(layer.pattern(n), want.expand(2, n, n))
    # the model-wide `global_tokens` is Longformer's token-level setting: BigBird refuses it
    with pytest.raises(ValueError, match=r"no layer of this model has global tokens.*num_global"):
        ModelConfig(attention="bigbird", architecture="causal-lm", global_tokens=4)
