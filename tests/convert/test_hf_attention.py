"""Hugging Face's rules as ports of the core layers (`longseq.convert.hf_attention`).

Oracles, fp64: dense attention over what each port reports it scores, written out with loops
(LSH: the rounds laid end to end; local: chunk indices modulo the number of chunks; BigBird:
block 0 counted once per occurrence in a row of HF's eval-mode layout), and Hugging Face's
layers themselves with the same weights. Controls show the core layers differ, so the parity
tests can fail. Also: the registry keeps ports apart from the mechanisms, and older configs
that chose these rules by option load as the ports.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_local import dense_under_pattern, naive_pattern
from test_lsh import (
    HEADS,
    HIDDEN,
    TOL,
    assert_same_with_grads,
    dense_lsh,
    hugging_face_pair,
    padded_batch,
)

from longseq import attention
from longseq.attention import lsh, ops
from longseq.convert.hf_attention import hf_eval_layout
from longseq.models import ModelConfig


def make_lsh(**opts):
    return attention.build("lsh-hf", HIDDEN, HEADS, **opts).double().eval()


def make_local(**opts):
    return attention.build("local-hf", HIDDEN, HEADS, **opts).double().eval()


def make_core(name, **opts):
    return attention.build(name, HIDDEN, HEADS, **opts).double().eval()


def case_id(o):
    return "-".join(f"{k}={v}" for k, v in o.items())


# ------------------------------------------------------------------------------------ lsh-hf


def naive_wrapped_counts(layer, buckets, real, padded_len):
    """scored_pairs with the rounds laid end to end (Hugging Face), written out with loops."""
    b, h, r, n0 = buckets.shape
    c, n = layer.chunk_length, padded_len
    nb = math.prod(layer.bucket_factors(n))
    counts = torch.zeros(b, h, n0, n0, dtype=torch.int64)
    for bi in range(b):
        ok = real[bi].tolist() + [False] * (n - n0)
        for hi in range(h):
            seq = []
            for ri in range(r):
                bucket = buckets[bi, hi, ri].tolist() + [nb] * (n - n0)
                seq += sorted(range(n), key=lambda i, bk=bucket: (bk[i], i))
            chunks = [seq[j : j + c] for j in range(0, r * n, c)]
            for j, chunk in enumerate(chunks):
                prev = chunks[j - 1] if n > c else []  # j = 0: the very last chunk
                for qi in chunk:
                    for ki in prev + chunk:
                        if ok[qi] and ok[ki] and (not layer.causal or ki <= qi):
                            counts[bi, hi, qi, ki] += 1
    return counts


WRAP_CONFIGS = [
    {"num_buckets": 4, "n_hashes": 1, "chunk_length": 4},
    {"num_buckets": 4, "n_hashes": 2, "chunk_length": 4, "causal": True},
    {"num_buckets": [2, 4], "n_hashes": 3, "chunk_length": 3},
    {"num_buckets": 2, "n_hashes": 2, "chunk_length": 6, "pad_multiple": 12},
    {"num_buckets": 6, "n_hashes": 2, "chunk_length": 20},  # one chunk: no wrap
]


@pytest.mark.parametrize("opts", WRAP_CONFIGS, ids=case_id)
def test_lsh_equals_dense_over_scored_pairs(opts):
    layer = make_lsh(**opts)
    x, real = padded_batch([18, 11, 14], 18)
    real[2, :3] = False
    counts = layer.scored_pairs(x, attention_mask=real)
    n = -(-18 // layer.pad_multiple) * layer.pad_multiple
    naive = naive_wrapped_counts(layer, layer.buckets(x, real), real, n)
    torch.testing.assert_close(counts, naive, **TOL)
    assert_same_with_grads(layer, x, real, lambda t: dense_lsh(layer, t, counts, real))


def test_lsh_looks_back_across_rounds():
    """The oracle can fail: wrapping scores pairs the core layer never scores."""
    opts = {"num_buckets": 4, "n_hashes": 2, "chunk_length": 4}
    plain, wrapped = make_core("lsh", **opts), make_lsh(**opts)
    wrapped.load_state_dict(plain.state_dict())
    x = torch.randn(1, 16, HIDDEN, dtype=torch.float64)
    c_plain, c_wrap = plain.scored_pairs(x), wrapped.scored_pairs(x)
    assert (c_wrap >= c_plain).all() and c_wrap.sum() - c_plain.sum() == HEADS * 2 * 4 * 4
    assert not torch.allclose(plain(x), wrapped(x), atol=1e-6)
    torch.testing.assert_close(wrapped(x), dense_lsh(wrapped, x, c_wrap, torch.ones(1, 16).bool()))


def test_lsh_pad_multiple_changes_wrapped_outputs():
    x, real = padded_batch([10], 10)
    base = {"num_buckets": 4, "n_hashes": 2, "chunk_length": 4}
    a, b = make_lsh(**base), make_lsh(pad_multiple=16, **base)
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(a(x, attention_mask=real), b(x, attention_mask=real), atol=1e-6)


@pytest.mark.parametrize("keep_probs", [True, False])
def test_lsh_dropout_gradcheck(keep_probs, monkeypatch):
    if not keep_probs:
        monkeypatch.setattr(lsh, "_KEEP_PROBS_BYTES", 0)
    layer = make_lsh(num_buckets=4, n_hashes=2, chunk_length=4, dropout=0.3)
    layer.train()
    x = torch.randn(2, 12, HIDDEN, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, -5:] = 0

    def run(t):
        torch.manual_seed(5)
        return layer(t, attention_mask=mask)

    assert torch.autograd.gradcheck(run, (x,), fast_mode=True)


LSH_HF_CASES = [
    {"n": 24, "c": 4, "hashes": 2, "nb": 4, "causal": False},
    {"n": 24, "c": 4, "hashes": 2, "nb": 4, "causal": True},
    {"n": 24, "c": 6, "hashes": 1, "nb": [2, 4], "causal": False},
    {"n": 30, "c": 5, "hashes": 3, "nb": [4, 2], "causal": True},
    {"n": 8, "c": 8, "hashes": 2, "nb": 4, "causal": False},  # one chunk: plain attention
]


@pytest.mark.parametrize(
    "case", LSH_HF_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_lsh_matches_hugging_face_everywhere(case):
    """Every real token's context equals Hugging Face's LSHSelfAttention,
    with padding (a row with 5 padding tokens, one with left padding) and factorised buckets."""
    n, c, hashes, nb, causal, seed = (*case.values(), 11)
    hf, ours = hugging_face_pair("lsh-hf", c, hashes, nb, causal, seed)
    x, real = padded_batch([n, n - 5, n - 2], n)
    real[2, :2] = False
    with torch.random.fork_rng():  # Hugging Face reseeds the global generator
        result = hf(x, attention_mask=real.long())
    ctx = ops.merge_heads(ours.attend(x, real, None))
    torch.testing.assert_close(ctx[real], result.hidden_states[real], **TOL)
    if n > c:  # the core layer (no wrap) differs from Hugging Face at some real token
        _, plain = hugging_face_pair("lsh", c, hashes, nb, causal, seed)
        plain.load_state_dict(ours.state_dict())  # the same weights, the core rule
        ctx_plain = ops.merge_heads(plain.attend(x, real, None))
        assert not torch.allclose(ctx_plain[real], result.hidden_states[real], atol=1e-6)


def test_lsh_copies_hugging_face_float32_rounding():
    """A causal first token sees only itself (score SELF_MASK = -1e5) in every round. In
    float32 HF's round weights exp(lse_r - logsumexp(lse)) then sum to 1 only within ~0.4%
    (float32 steps near 1e5 are 0.0078); the port copies that, the core layer sums exactly."""
    reformer = pytest.importorskip("transformers.models.reformer.modeling_reformer")
    from transformers import ReformerConfig

    config = ReformerConfig(
        hidden_size=32,
        num_attention_heads=2,
        attention_head_size=16,
        lsh_attn_chunk_length=16,
        num_hashes=2,
        num_buckets=4,
        is_decoder=True,
        hash_seed=3,
        lsh_attention_probs_dropout_prob=0.0,
    )
    hf = reformer.LSHSelfAttention(config).eval()
    opts = {"num_buckets": 4, "n_hashes": 2, "chunk_length": 16, "seed": 3, "causal": True}
    ours = attention.build("lsh-hf", 32, 2, bias=False, **opts).eval()
    exact = attention.build("lsh", 32, 2, bias=False, **opts).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        for layer in (ours, exact):
            layer.query.weight.copy_(hf.query_key.weight)
            layer.value.weight.copy_(hf.value.weight)
    x = torch.randn(2, 64, 32)
    real = torch.ones(2, 64, dtype=torch.bool)
    real[1, 48:] = False
    with torch.random.fork_rng():
        expected = ops.split_heads(hf(x, attention_mask=real.long()).hidden_states, 2)
    ctx = ours.attend(x, real, None)
    torch.testing.assert_close(ctx[:, :, :48], expected[:, :, :48], rtol=0, atol=1e-6)
    v0 = ours.qk_and_value(x)[1][:, :, 0]
    assert (expected[:, :, 0] - v0).abs().max() > 1e-4  # HF's rounding, copied
    torch.testing.assert_close(exact.attend(x, real, None)[:, :, 0], v0, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------- local-hf


LOCAL_CONFIGS = [
    {"chunk_length": 4},  # 5 chunks > window: no chunk twice
    {"chunk_length": 3, "num_chunks_after": 1, "causal": True},
    {"chunk_length": 4, "pad_multiple": 8},
    {"chunk_length": 3, "num_chunks_before": 2, "num_chunks_after": 1},  # 6 chunks, window 4
    {"chunk_length": 32},  # one chunk: dense, no wrap
]


@pytest.mark.parametrize("opts", LOCAL_CONFIGS, ids=case_id)
def test_local_pattern_matches_naive_loops(opts):
    layer = make_local(**opts)
    n = 18
    padded = -(-n // layer.pad_multiple) * layer.pad_multiple
    chunks = padded // layer.chunk_length if padded > layer.chunk_length else None
    expected = naive_pattern(
        n, layer.chunk_length, layer.num_chunks_before, layer.num_chunks_after, layer.causal, chunks
    )
    assert torch.equal(layer.pattern(n), expected.expand(HEADS, n, n))


@pytest.mark.parametrize("opts", LOCAL_CONFIGS, ids=case_id)
def test_local_equals_dense_under_pattern(opts):
    """(At n = 18 no chunk lands twice in a window: the pattern is the whole story.)"""
    layer = make_local(**opts)
    x, real = padded_batch([18, 11, 15], 18)
    real[2, :2] = False  # left padding too
    assert_same_with_grads(layer, x, real, lambda t: dense_under_pattern(layer, t, real))


def test_local_wraps_where_the_core_layer_does_not():
    x, _ = padded_batch([16], 16)
    core, wrapped = make_core("local", chunk_length=4), make_local(chunk_length=4)
    wrapped.load_state_dict(core.state_dict())
    assert not torch.allclose(core(x)[:, :4], wrapped(x)[:, :4], atol=1e-6)
    torch.testing.assert_close(core(x)[:, 4:], wrapped(x)[:, 4:], **TOL)


def test_local_pad_multiple_changes_wrapped_outputs():
    x, real = padded_batch([10], 10)
    a, b = make_local(chunk_length=4), make_local(chunk_length=4, pad_multiple=16)
    b.load_state_dict(a.state_dict())
    # padded to 12, chunk 0 sees positions 8, 9 (real); padded to 16, only padding
    assert not torch.allclose(a(x, attention_mask=real), b(x, attention_mask=real), atol=1e-6)


def test_local_gradcheck_with_dropout():
    layer = make_local(chunk_length=3, num_chunks_after=1, dropout=0.2).train()
    x = torch.randn(2, 8, HIDDEN, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0

    def run(t):
        torch.manual_seed(3)
        return layer(t, attention_mask=mask)

    assert not torch.allclose(run(x), layer.eval()(x, attention_mask=mask))
    layer.train()
    assert torch.autograd.gradcheck(run, (x,), fast_mode=True)


LOCAL_HF_CASES = [
    {"n": 16, "c": 4, "before": 1, "after": 0, "causal": False},
    {"n": 16, "c": 4, "before": 1, "after": 0, "causal": True},
    {"n": 12, "c": 4, "before": 2, "after": 1, "causal": False},  # a chunk twice per window
    {"n": 8, "c": 4, "before": 1, "after": 1, "causal": True},  # causal sees chunk 0 wrapped
    {"n": 6, "c": 8, "before": 1, "after": 0, "causal": False},  # one chunk: plain attention
]


@pytest.mark.parametrize("case", LOCAL_HF_CASES, ids=case_id)
def test_local_matches_hugging_face(case):
    """Equal to Hugging Face's LocalSelfAttention at every real token (padding in one row,
    left padding in another); the core layer differs wherever wrapping shows."""
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
    ours = make_local(**opts)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(ours, name).weight.copy_(getattr(hf, name).weight)
    x, real = padded_batch([n, n - 3, n - 1], n)
    real[2, :1] = False
    expected = hf(x, attention_mask=real.long()).hidden_states
    ctx = ops.merge_heads(ours.attend(x, real, None))
    torch.testing.assert_close(ctx[real], expected[real], **TOL)
    plain = make_core("local", **opts)
    plain.load_state_dict(ours.state_dict())
    ctx_plain = ops.merge_heads(plain.attend(x, real, None))
    if n > c and (after > 0 or not causal):
        assert not torch.allclose(ctx_plain[real], expected[real], atol=1e-6)
    else:  # one chunk, or causal without look-ahead: what wraps is in the future, masked
        torch.testing.assert_close(ctx_plain[real], expected[real], **TOL)


# -------------------------------------------------------------------------------- bigbird-hf


H, HID, B, R = 4, 32, 4, 2  # heads, hidden, block size, random blocks


def layer(**opts) -> attention.SelfAttention:
    torch.manual_seed(0)
    return attention.build("bigbird-hf", HID, H, block_size=B, num_random_blocks=R, **opts)


def counted_dense(lay: attention.SelfAttention, x: torch.Tensor, real: torch.Tensor):
    """softmax with multiplicities: sum_j c_ij e^{s_ij} v_j / sum_j c_ij e^{s_ij}."""
    n = x.shape[1]
    nb = -(-n // B)
    layout = hf_eval_layout(nb, H, R)
    counts = torch.zeros(H, nb, nb, dtype=x.dtype)
    counts.scatter_add_(2, layout.index, layout.valid.to(x.dtype))
    counts[:, layout.global_blocks] = 1.0
    c = counts.repeat_interleave(B, 1).repeat_interleave(B, 2)[:, :n, :n]
    assert torch.equal(lay.pattern(n), c > 0)
    q, k, v = lay.project(x)
    s = q @ k.transpose(-1, -2)
    w = c * (s - s.amax(-1, keepdim=True)).exp() * real[:, None, None, :]
    ctx = (w @ v) / w.sum(-1, keepdim=True)
    out = lay.out(ctx.transpose(1, 2).flatten(2))
    return out.masked_fill(~real[..., None], 0.0)


@pytest.mark.parametrize(("n", "lengths"), [(48, (48, 33)), (50, (50, 50)), (61, (61, 20))])
def test_bigbird_equals_dense_with_block_zero_counted_r_plus_one_times(n, lengths) -> None:
    lay = layer().double()
    x = torch.randn(len(lengths), n, HID, dtype=torch.float64)
    real = torch.arange(n) < torch.tensor(lengths)[:, None]
    out = lay(x, attention_mask=real.long())
    torch.testing.assert_close(out, counted_dense(lay, x, real), rtol=1e-10, atol=1e-10)
    # control: counting block 0 once (a plain pattern mask) gives something else
    plain = torch.where(real[:, None, None, :], 0.0, float("-inf"))
    q, k, v = lay.project(x)
    s = q @ k.transpose(-1, -2) + plain
    s = s.masked_fill(~lay.pattern(n), float("-inf"))
    once = lay.out((s.softmax(-1) @ v).transpose(1, 2).flatten(2))
    assert (once - out)[real].abs().max() > 1e-3


def test_bigbird_short_inputs_get_full_attention() -> None:
    lay = layer().double()
    n = (5 + 2 * R) * B  # the longest input HF runs as original_full
    x = torch.randn(2, n, HID, dtype=torch.float64)
    real = torch.arange(n) < torch.tensor([n, 11])[:, None]
    full = attention.build("full", HID, H).double()
    full.load_state_dict(lay.state_dict())
    torch.testing.assert_close(lay(x, real.long()), full(x, real.long()))
    assert bool(lay.pattern(n).all())


def test_bigbird_matches_hugging_face_block_sparse_layer() -> None:
    transformers = pytest.importorskip("transformers")
    from transformers.models.big_bird import modeling_big_bird as mb

    config = transformers.BigBirdConfig(
        hidden_size=HID, num_attention_heads=H, block_size=B, num_random_blocks=R
    )
    torch.manual_seed(0)
    hf = mb.BigBirdBlockSparseAttention(config, seed=0).eval()
    ours = layer()
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(ours, name).load_state_dict(getattr(hf, name).state_dict())
        ours.out.weight.copy_(torch.eye(HID))  # HF's layer returns the context itself
        ours.out.bias.zero_()
    n = 48
    x = torch.randn(2, n, HID)
    mask = (torch.arange(n) < torch.tensor([[n], [29]])).float()
    blocked, band, from_mask, to_mask = mb.BigBirdModel.create_masks_for_block_sparse_attn(mask, B)
    with torch.no_grad():
        want, _ = hf(x, band, from_mask, to_mask, blocked, blocked)
        got = ours(x, attention_mask=mask.long())
    assert (want - got)[mask.bool()].abs().max() < 1e-5


@pytest.mark.parametrize(
    "opts",
    [
        ({"variant": "etc"}, "Hugging Face's BigBird, whose shape"),
        ({"num_global_blocks": 1}, "Hugging Face's BigBird, whose shape"),
        ({"num_sliding_blocks": 5}, "Hugging Face's BigBird, whose shape"),
        ({"causal": True}, "'bigbird-hf' attention cannot be causal"),
        ({"random_source": "hf-eval"}, "unknown option"),
    ],
)
def test_bigbird_options_hf_cannot_have_are_refused(opts) -> None:
    opts, match = opts
    with pytest.raises(ValueError, match=match):
        attention.build("bigbird-hf", HID, H, block_size=B, **opts)


# ------------------------------------------------------------------------------- registry


def test_ports_are_not_mechanisms():
    """compare, the benchmark, the pictures and the invariant suite offer mechanisms only."""
    assert set(attention.ports()) == {"bigbird-hf", "lsh-hf", "local-hf"}
    assert not set(attention.ports()) & set(attention.mechanisms())
    for port in attention.ports():
        assert attention.get(port).name == port
    with pytest.raises(ValueError, match=r"unknown attention mechanism 'lsh-x'.*ports.*lsh-hf"):
        attention.get("lsh-x")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (
            {"attention": "lsh", "attention_options": {"pad_multiple": 8}},
            r"layer 0: unknown option.*\(pad_multiple is an option of 'lsh-hf' only\)",
        ),
        # options no release wrote (a port's rule chosen on the core mechanism): unknown
        ({"attention": "lsh", "attention_options": {"wrap_rounds": True}}, "unknown option"),
        ({"attention": "bigbird", "attention_options": {"random_source": "hf-eval"}}, "unknown"),
    ],
)
def test_options_of_no_such_layer_are_refused(data, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict(data)


def test_a_port_only_option_points_to_its_port():
    with pytest.raises(ValueError, match=r"\(pad_multiple is an option of 'local-hf' only\)"):
        attention.build("local", HIDDEN, HEADS, pad_multiple=128)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['wrap_rounds'\] for 'lsh'"):
        attention.build("lsh", HIDDEN, HEADS, wrap_rounds=True)


@pytest.mark.parametrize("name", ["lsh-hf", "local-hf"])
@pytest.mark.parametrize(
    ("pad", "match"),
    [(6, "pad_multiple must be a positive multiple of chunk_length=4"), (0, "pad_multiple"),
     (True, "pad_multiple")],
)  # fmt: skip
def test_ports_refuse_a_bad_pad_multiple(name, pad, match):
    with pytest.raises(ValueError, match=match):
        attention.build(name, HIDDEN, HEADS, chunk_length=4, pad_multiple=pad)


def test_longify_knows_the_bigbird_port_is_full_attention_on_short_inputs():
    """`bigbird-hf` is dense up to (5 + 2r) * block_size tokens, so a converted BigBird
    longified to another mechanism stays exact there (longify.dense_up_to reads its pattern)."""
    from longseq.convert.longify import dense_up_to

    opts = {"block_size": 4, "num_random_blocks": 2}
    assert dense_up_to("bigbird-hf", opts, 2, False, 100) == (5 + 2 * 2) * 4
    assert dense_up_to("bigbird", opts, 2, False, 100) < 36  # the core layout is sparser
