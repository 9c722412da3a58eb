"""Reformer LSH attention against dense shared-QK attention over the pairs it reports."""

from __future__ import annotations

import pytest
import torch

from longseq import attention
from longseq.attention import lsh, ops
from longseq.attention.lsh import SELF_MASK, LSHAttention, derived_num_buckets

HIDDEN, HEADS = 16, 2
TOL = {"rtol": 1e-10, "atol": 1e-10}


def make(**opts) -> LSHAttention:
    return attention.build("lsh", HIDDEN, HEADS, **opts).double().eval()


def padded_batch(lengths: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(len(lengths), n, HIDDEN, dtype=torch.float64)
    real = torch.zeros(len(lengths), n, dtype=torch.bool)
    for i, length in enumerate(lengths):
        real[i, :length] = True
    return x, real


def dense_lsh(layer, x, counts, real, self_score: float | None = SELF_MASK):
    """Softmax over pairs with counts > 0 of score + log(count); the self score is SELF_MASK."""
    qk, v = layer.qk_and_value(x)
    key = qk / qk.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() / layer.head_dim**0.5
    scores = qk @ key.transpose(-1, -2)
    n = x.shape[1]
    eye = torch.eye(n, dtype=torch.bool)
    if self_score is not None:
        scores = scores.masked_fill(eye, self_score)
    scores = scores + counts.double().clamp(min=1).log()
    scores = scores.masked_fill(counts == 0, float("-inf"))
    ctx = torch.softmax(scores, -1).nan_to_num(0.0) @ v
    return layer.out(ops.merge_heads(ctx)).masked_fill(~real.unsqueeze(-1), 0.0)


def dense_shared_qk(layer: LSHAttention, x: torch.Tensor, real: torch.Tensor):
    """Plain dense shared-QK attention with the self mask: every allowed pair once. Causal,
    (prefix-stable) a pair counts once per round in which both share a bucket."""
    n = x.shape[1]
    allowed = (real[:, None, None, :] & real[:, None, :, None]).expand(-1, HEADS, -1, -1).long()
    if layer.causal:
        b = layer.buckets(x, real)  # (B, H, R, N)
        same = (b[..., :, None] == b[..., None, :]).sum(2)  # rounds sharing a bucket
        allowed = allowed * same * torch.ones(n, n, dtype=torch.long).tril()
    return dense_lsh(layer, x, allowed, real)


def assert_same_with_grads(layer, x, real, reference):
    """Outputs and gradients (input and every parameter) of layer vs reference agree."""
    x = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, dtype=x.dtype)
    params = [x, *layer.parameters()]
    ours = layer(x, attention_mask=real)
    ref = reference(x)
    torch.testing.assert_close(ours, ref, **TOL)
    g_ours = torch.autograd.grad((ours * w).sum(), params)
    g_ref = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def naive_counts(layer: LSHAttention, buckets: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """scored_pairs written out with Python sorts and loops (independent of the kernel)."""
    b, h, r, n0 = buckets.shape
    c = layer.chunk_length
    n = -(-n0 // c) * c
    nb = layer.num_buckets or derived_num_buckets(n, c)
    counts = torch.zeros(b, h, n0, n0, dtype=torch.int64)
    for bi in range(b):
        ok = real[bi].tolist() + [False] * (n - n0)
        for hi in range(h):
            for ri in range(r):
                bucket = buckets[bi, hi, ri].tolist() + [nb] * (n - n0)
                order = sorted(range(n), key=lambda i, bk=bucket: (bk[i], i))
                chunks = [order[j : j + c] for j in range(0, n, c)]
                for j, chunk in enumerate(chunks):
                    window = (chunks[j - 1] if j > 0 else []) + chunk
                    for qi in chunk:
                        for ki in window:
                            if (
                                ok[qi]
                                and ok[ki]
                                and (not layer.causal or _latest(bucket, c, qi, ki))
                            ):
                                counts[bi, hi, qi, ki] += 1
    return counts


def _latest(bucket: list[int], c: int, qi: int, ki: int) -> bool:
    """Prefix-stable causal LSH: ki is one of the c latest tokens of qi's bucket up to qi."""
    same = [t for t in range(qi + 1) if bucket[t] == bucket[qi]]
    return ki in same[-c:]


# ------------------------------------------------------------------ (1) one chunk == dense


@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("num_buckets", [2, 6])
@pytest.mark.parametrize("causal", [False, True])
def test_one_chunk_equals_dense_shared_qk(n_hashes, num_buckets, causal):
    layer = make(num_buckets=num_buckets, n_hashes=n_hashes, chunk_length=16, causal=causal)
    x, real = padded_batch([13, 9], 13)
    assert_same_with_grads(layer, x, real, lambda t: dense_shared_qk(layer, t, real))


def test_one_chunk_oracle_can_fail():
    layer = make(num_buckets=2, chunk_length=16)
    x, real = padded_batch([10], 10)
    ref = dense_shared_qk(layer, x, real)
    ours = layer(x, attention_mask=real)
    torch.testing.assert_close(ours, ref, **TOL)
    counts = torch.ones(1, HEADS, 10, 10, dtype=torch.long)
    assert not torch.allclose(ours, dense_lsh(layer, x, counts, real, self_score=None), atol=1e-6)


# ------------------------------------------------------------------ (2) dense over reported pairs

CONFIGS = [
    {"num_buckets": 4, "n_hashes": 1, "chunk_length": 4},
    {"num_buckets": 4, "n_hashes": 2, "chunk_length": 4},
    {"num_buckets": 8, "n_hashes": 3, "chunk_length": 3},
    {"num_buckets": 2, "n_hashes": 4, "chunk_length": 5},
    {"num_buckets": 6, "n_hashes": 2, "chunk_length": 2, "causal": True},
    {"num_buckets": 4, "n_hashes": 3, "chunk_length": 4, "causal": True},
    {"num_buckets": None, "n_hashes": 2, "chunk_length": 2, "seed": 7},
]


@pytest.mark.parametrize("unit_groups", [False, True], ids=["one-group", "unit-groups"])
@pytest.mark.parametrize("opts", CONFIGS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_equals_dense_over_scored_pairs(opts, unit_groups, monkeypatch):
    if unit_groups:  # one (sequence, head) pair at a time, probabilities recomputed in backward
        monkeypatch.setattr(lsh, "_GROUP_BYTES", 1)
        monkeypatch.setattr(lsh, "_KEEP_PROBS_BYTES", 0)
    layer = make(**opts)
    x, real = padded_batch([18, 11, 14], 18)
    real[2, :3] = False  # left padding too
    counts = layer.scored_pairs(x, attention_mask=real)
    torch.testing.assert_close(counts, naive_counts(layer, layer.buckets(x, real), real), **TOL)
    assert_same_with_grads(layer, x, real, lambda t: dense_lsh(layer, t, counts, real))


def test_rounds_are_not_deduplicated():
    """The oracle can fail: counting each pair once (de-duplicated) gives another output."""
    layer = make(num_buckets=2, n_hashes=4, chunk_length=4)
    x, real = padded_batch([16], 16)
    counts = layer.scored_pairs(x, attention_mask=real)
    assert counts.max() > 1 and (counts == 1).any()
    ours = layer(x, attention_mask=real)
    torch.testing.assert_close(ours, dense_lsh(layer, x, counts, real), **TOL)
    assert not torch.allclose(ours, dense_lsh(layer, x, counts.clamp(max=1), real), atol=1e-6)


def test_no_wrap_from_first_chunk():
    """The first chunk of a round sees no other chunk (Hugging Face wraps to the last one)."""
    layer = make(num_buckets=4, n_hashes=1, chunk_length=4)
    x = torch.randn(2, 16, HIDDEN, dtype=torch.float64)
    counts = layer.scored_pairs(x)
    order = LSHAttention.sort_order(layer.buckets(x))[:, :, 0]  # (B, H, N)
    for b in range(2):
        for h in range(HEADS):
            first, second, last = order[b, h, :4], order[b, h, 4:8], order[b, h, -4:]
            assert counts[b, h][first][:, last].sum() == 0
            assert counts[b, h][last][:, first].sum() == 0
            assert torch.all(counts[b, h][second][:, first] == 1)  # the look-back is there


def test_scored_pairs_self_and_padding():
    layer = make(num_buckets=4, n_hashes=3, chunk_length=4, causal=True)
    x, real = padded_batch([9, 6], 9)
    counts = layer.scored_pairs(x, attention_mask=real)
    diag = counts.diagonal(dim1=-2, dim2=-1)
    assert torch.equal(diag, 3 * real[:, None, :].expand_as(diag).long())
    assert counts[1, :, 6:].sum() == 0 and counts[1, :, :, 6:].sum() == 0
    assert torch.all(counts.triu(1) == 0)  # causal


# ------------------------------------------------------------------ (3) hashing and sorting


def test_padding_is_sorted_after_real_tokens():
    layer = make(num_buckets=4, n_hashes=3, chunk_length=4)
    x = torch.randn(1, 12, HIDDEN, dtype=torch.float64)
    real = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    buckets = layer.buckets(x, real)
    assert torch.all(buckets[..., ~real[0]] == 4) and torch.all(buckets[..., real[0]] < 4)
    order = LSHAttention.sort_order(buckets)
    n_real = int(real.sum())
    assert torch.all(real[0][order[..., :n_real]]) and not torch.any(real[0][order[..., n_real:]])
    sorted_buckets = buckets.gather(-1, order)
    assert torch.all(sorted_buckets.diff(dim=-1) >= 0)


def test_hashing_is_seeded_and_deterministic():
    x = torch.randn(2, 40, HIDDEN, dtype=torch.float64)
    a = make(num_buckets=8, n_hashes=2, seed=3)
    b = make(num_buckets=8, n_hashes=2, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.buckets(x), b.buckets(x))
    assert torch.equal(a.train().buckets(x), a.eval().buckets(x))
    c = make(num_buckets=8, n_hashes=2, seed=4)
    c.load_state_dict(a.state_dict())
    assert not torch.equal(a.buckets(x), c.buckets(x))
    rot = a.rotations(8, torch.float64, torch.device("cpu"))
    assert rot.shape == (HEADS, HIDDEN // HEADS, 2, 4)
    assert not torch.equal(rot[:, :, 0], rot[:, :, 1]) and not torch.equal(rot[0], rot[1])


def test_derived_num_buckets():
    assert [derived_num_buckets(n, 64) for n in (64, 128, 256, 4096)] == [2, 4, 8, 128]
    layer = make(n_hashes=2, chunk_length=4)
    buckets = layer.buckets(torch.randn(1, 30, HIDDEN, dtype=torch.float64))  # padded to 32
    assert buckets.max() < 16


# ------------------------------------------------------------------ (4) lonely rows


def test_lone_token_returns_its_value():
    layer = make(num_buckets=4, n_hashes=2, chunk_length=4)
    x = torch.randn(1, 1, HIDDEN, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    expected = layer.out(layer.value(x))
    torch.testing.assert_close(out, expected, **TOL)
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.autograd.grad(expected.sum(), x)[0], **TOL)


def test_first_causal_token_and_single_real_token_see_only_themselves():
    layer = make(num_buckets=4, n_hashes=2, chunk_length=4, causal=True)
    x, real = padded_batch([10, 1], 10)
    real[0, :] = True
    ctx = layer.attend(x, real, None)
    v = layer.qk_and_value(x)[1]
    assert torch.isfinite(ctx).all()
    torch.testing.assert_close(ctx[:, :, 0], v[:, :, 0], **TOL)


# ------------------------------------------------------------------ (5) errors and options


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"num_buckets": 5}, "num_buckets must be an even integer >= 2"),
        ({"num_buckets": 0}, "num_buckets must be an even"),
        ({"num_buckets": 4.0}, "num_buckets must be an even"),
        ({"chunk_length": 0}, "chunk_length must be an integer >= 1, got 0"),
        ({"n_hashes": 0}, "n_hashes must be an integer >= 1, got 0"),
        ({"n_hashes": True}, "n_hashes must be an integer"),
        ({"seed": "a"}, "seed must be an integer"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("lsh", HIDDEN, HEADS, **opts)


def test_shares_query_and_key_projection():
    layer = make()
    assert not hasattr(layer, "key") and layer.shared_qk
    assert attention.options("lsh") == {
        "num_buckets": None,
        "n_hashes": 1,
        "chunk_length": 64,
        "seed": 0,
        "causal": False,
        "dropout": 0.0,
        "bias": True,
        "num_key_value_heads": None,
        "backend": "native",
    }


@pytest.mark.parametrize("keep_probs", [True, False])
def test_dropout_in_training_only_and_gradients_exact(keep_probs, monkeypatch):
    monkeypatch.setattr(lsh, "_GROUP_BYTES", 1)  # one head per group: masks kept per group
    if not keep_probs:
        monkeypatch.setattr(lsh, "_KEEP_PROBS_BYTES", 0)
    layer = make(num_buckets=4, n_hashes=2, chunk_length=4, dropout=0.3)
    x = torch.randn(1, 12, HIDDEN, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[:, -3:] = 0
    assert torch.equal(layer(x), layer(x))
    layer.train()

    def run(t):
        torch.manual_seed(5)
        return layer(t, attention_mask=mask)

    assert not torch.allclose(run(x), layer.eval()(x, attention_mask=mask))
    layer.train()
    assert torch.autograd.gradcheck(run, (x,), fast_mode=True)


# ------------------------------------------------------------------ Hugging Face parity


def hugging_face_pair(name: str, c: int, hashes: int, nb, causal: bool, seed: int):
    """Hugging Face's LSHSelfAttention (fp64, eval) and layer `name` with its weights."""
    reformer = pytest.importorskip("transformers.models.reformer.modeling_reformer")
    from transformers import ReformerConfig

    config = ReformerConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        attention_head_size=HIDDEN // HEADS,
        lsh_attn_chunk_length=c,
        num_hashes=hashes,
        num_buckets=nb,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        is_decoder=causal,
        hash_seed=seed,
        lsh_attention_probs_dropout_prob=0.0,
    )
    hf = reformer.LSHSelfAttention(config).double().eval()
    opts = {"num_buckets": nb, "n_hashes": hashes, "chunk_length": c, "seed": seed}
    ours = attention.build(name, HIDDEN, HEADS, causal=causal, bias=False, **opts)
    with torch.no_grad():
        ours.query.weight.copy_(hf.query_key.weight)
        ours.value.weight.copy_(hf.value.weight)
    return hf, ours.double().eval()


@pytest.mark.parametrize("causal", [False])
def test_matches_hugging_face_outside_first_chunks(causal):
    """Same rotations (seeded alike), same buckets; outputs agree for every token that is in
    no round's first chunk (the only place where Hugging Face wraps around; its port `lsh-hf`
    matches everywhere: tests/convert/test_hf_attention.py). (Causal layers follow Hugging Face
    only through the port: the core causal rule is prefix-stable.)"""
    n, c, hashes, nb, seed = 24, 4, 2, 4, 11
    hf, ours = hugging_face_pair("lsh", c, hashes, nb, causal, seed)
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64)
    with torch.random.fork_rng():  # Hugging Face reseeds the global generator
        result = hf(x)
    offsets = (torch.arange(hashes) * nb).view(1, 1, -1, 1)
    buckets = ours.buckets(x)
    assert torch.equal(result.buckets - offsets, buckets)
    rank = LSHAttention.sort_order(buckets).argsort(-1)  # (1, H, R, N)
    inside = (rank >= c).all(dim=2)  # (1, H, N): in no round's first chunk
    ctx = ours.attend(x, torch.ones(1, n, dtype=torch.bool), None)
    hf_ctx = ops.split_heads(result.hidden_states, HEADS)
    assert inside.sum() >= n // 2
    torch.testing.assert_close(ctx[inside], hf_ctx[inside], **TOL)


@pytest.mark.parametrize("keep_probs", [True, False])
def test_backward_twice_with_retained_graph(keep_probs, monkeypatch):
    """The backward leaves what it saved untouched (dropout masks, kept probabilities)."""
    if not keep_probs:
        monkeypatch.setattr(lsh, "_KEEP_PROBS_BYTES", 0)
    layer = make(num_buckets=4, n_hashes=2, chunk_length=4, dropout=0.2).train()
    x = torch.randn(2, 10, HIDDEN, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    (g1,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(g1, g2)


# ------------------------------------------------------------------ factorised buckets


def test_factorised_buckets():
    """[f1, f2]: bucket = b1 + f1 * b2 from consecutive groups of rotation columns."""
    layer = make(num_buckets=[2, 4], n_hashes=2, chunk_length=4, seed=5)
    x = torch.randn(2, 12, HIDDEN, dtype=torch.float64)
    real = torch.ones(2, 12, dtype=torch.bool)
    real[1, 9:] = False
    buckets = layer.buckets(x, real)
    qk = layer.qk_and_value(x)[0]
    rot = layer.rotations(6, torch.float64, torch.device("cpu"))  # (H, D, R, 3)
    proj = torch.einsum("bhnd,hdrk->bhrnk", qk, rot)
    b1 = torch.cat([proj[..., :1], -proj[..., :1]], -1).argmax(-1)
    b2 = torch.cat([proj[..., 1:], -proj[..., 1:]], -1).argmax(-1)
    expected = (b1 + 2 * b2).masked_fill(~real[:, None, None, :], 8)
    assert torch.equal(buckets, expected)
    assert len(buckets[0].unique()) > 2


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"num_buckets": [2, 3]}, "num_buckets must be an even integer >= 2, a list"),
        ({"num_buckets": []}, "num_buckets must be"),
    ],
)
def test_bad_factor_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("lsh", HIDDEN, HEADS, **opts)


@pytest.mark.parametrize("causal", [False, True])
def test_rotary_rotates_the_shared_vector(causal):
    """Under rotary positions (a longified rotary decoder) the shared vector of position p is
    rotated by p before hashing and scoring: q_i . k_j then depends on i - j, as the dense
    model's scores did; one chunk still equals dense shared-QK attention over those vectors."""
    from longseq.layers import RotaryEmbedding

    layer = make(num_buckets=2, chunk_length=16, causal=causal)
    layer.rotary = RotaryEmbedding(layer.head_dim, 100.0)
    x, real = padded_batch([13, 9], 13)
    qk, _ = layer.qk_and_value(x)
    plain = ops.split_heads(layer.query(x), HEADS)
    want, _ = layer.rotary(plain, plain)
    torch.testing.assert_close(qk, want)
    assert not torch.allclose(qk, plain)
    assert_same_with_grads(layer, x, real, lambda t: dense_shared_qk(layer, t, real))
