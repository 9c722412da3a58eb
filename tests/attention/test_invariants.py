"""Behaviour every mechanism owes its users, whatever its pattern."""

from __future__ import annotations

import pytest
import torch
from cases import HEADS, HIDDEN, all_cases, case_id

from longseq import attention
from longseq.attention.base import SelfAttention

CASES = all_cases()


def make(name, opts):
    return attention.build(name, HIDDEN, HEADS, **opts).double().eval()


def _glob(name, opts, batch, n):
    """Token 1 global (under a causal mask: a sink seen by every later query)."""
    if not attention.get(name).supports_global:
        return None
    g = torch.zeros(batch, n, dtype=torch.long)
    g[:, 1] = 1
    return g


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_padding_does_not_change_real_outputs(case):
    name, opts = case
    layer = make(name, opts)
    n = 11
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64)
    glob = _glob(name, opts, 1, n)
    alone = layer(x, global_attention_mask=glob)
    pad = 5
    xp = torch.cat([x, torch.randn(1, pad, HIDDEN, dtype=torch.float64)], dim=1)
    mask = torch.ones(1, n + pad, dtype=torch.long)
    mask[:, n:] = 0
    gp = None if glob is None else torch.cat([glob, torch.zeros(1, pad, dtype=torch.long)], 1)
    padded = layer(xp, attention_mask=mask, global_attention_mask=gp)
    torch.testing.assert_close(padded[:, :n], alone, rtol=1e-9, atol=1e-9)
    assert torch.all(padded[:, n:] == 0), "padding positions must be zero"


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_batch_equals_each_sequence_alone(case):
    name, opts = case
    layer = make(name, opts)
    lengths = [13, 7, 10]
    n = max(lengths)
    x = torch.randn(len(lengths), n, HIDDEN, dtype=torch.float64)
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    glob = _glob(name, opts, len(lengths), n)
    batched = layer(x, attention_mask=mask, global_attention_mask=glob)
    for i, L in enumerate(lengths):
        g = None if glob is None else glob[i : i + 1, :L]
        alone = layer(x[i : i + 1, :L], global_attention_mask=g)
        torch.testing.assert_close(batched[i : i + 1, :L], alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", [c for c in CASES if c[1].get("causal")], ids=case_id)
def test_causal_never_sees_the_future(case):
    name, opts = case
    layer = make(name, opts)
    n = 12
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    for i in range(n):
        (g,) = torch.autograd.grad(out[0, i].sum(), x, retain_graph=True)
        assert torch.all(g[0, i + 1 :] == 0), f"position {i} depends on a later position"


@pytest.mark.parametrize("case", [c for c in CASES if c[1].get("causal")], ids=case_id)
def test_causal_is_prefix_stable(case):
    """The output at t is the output of the layer run on tokens 0..t alone, and rewriting the
    tail leaves every earlier output unchanged (what generation through a cache needs)."""
    name, opts = case
    layer = make(name, opts)
    n = 23
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64)
    full = layer(x)
    for t in range(n):
        torch.testing.assert_close(layer(x[:, : t + 1])[:, t], full[:, t], rtol=1e-10, atol=1e-10)
    y = x.clone()
    y[:, 15:] = torch.randn(1, n - 15, HIDDEN, dtype=torch.float64)
    # equal up to rounding: a changed tail can regroup earlier tokens' work (LSH's buckets)
    # into other matmul shapes, whose fp64 sums differ in the last bits on some CPUs
    torch.testing.assert_close(layer(y)[:, :15], full[:, :15], rtol=1e-12, atol=1e-12)


def test_every_sink_mechanism_has_a_grouped_causal_case_with_sinks():
    """Mechanisms with `global_tokens`: the cache and prefix invariants cover the sinks."""
    takes = {m for m in attention.mechanisms() if "global_tokens" in attention.options(m)}
    assert takes, "some mechanism has global tokens"
    covered = {
        name
        for name, o in CASES
        if o.get("causal") and o.get("global_tokens") and o.get("num_key_value_heads")
    }
    assert takes <= covered


@pytest.mark.parametrize(
    "case", [c for c in CASES if c[1].get("causal") and c[1].get("global_tokens")], ids=case_id
)
def test_a_ring_with_sinks_keeps_constant_memory(case):
    """The ring holds the sinks plus the window, whatever the length decoded."""
    name, opts = case
    layer = make(name, opts)
    cache = layer.new_cache()
    sizes = []
    for t in range(40):
        layer(
            torch.randn(1, 1, HIDDEN, dtype=torch.float64),
            cache=cache,
            positions=torch.full((1, 1), t),
        )
        sizes.append(sum(x.numel() for x in cache.tensors()))
    assert cache.bounded and len(set(sizes)) == 1
    assert cache.pos[0, : opts["global_tokens"]].tolist() == list(range(opts["global_tokens"]))


def test_every_causal_mechanism_has_a_causal_case():
    """So that the prefix-stability and cache invariants cover a new mechanism by itself."""
    causal = {m for m in attention.mechanisms() if attention.get(m).supports_causal}
    assert causal <= {name for name, opts in CASES if opts.get("causal")}


@pytest.mark.parametrize("case", [c for c in CASES if c[1].get("causal")], ids=case_id)
def test_cache_equals_the_forward(case):
    """Token by token (and in chunks of 3, two rows at different lengths) through the layer's
    own cache == the layer's forward over the whole sequence."""
    name, opts = case
    layer = make(name, opts)
    n = 21
    x = torch.randn(2, n, HIDDEN, dtype=torch.float64)
    full = layer(x)
    cache = layer.new_cache()
    steps = [layer(x[:, t : t + 1], cache=cache, positions=torch.full((2, 1), t)) for t in range(n)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-10, atol=1e-10)
    # chunks of 3; row 1 lags 2 tokens behind (its chunk's tail marked as missing)
    cache, got = layer.new_cache(), [[], []]
    length = torch.zeros(2, dtype=torch.long)
    while int(length.min()) < n:
        take = torch.tensor(
            [min(3, n - int(length[0])), min(1 if length[1] < 4 else 3, n - int(length[1]))]
        )
        pos = length[:, None] + torch.arange(3)
        valid = torch.arange(3)[None] < take[:, None]
        chunk = x[torch.arange(2)[:, None], pos.clamp(max=n - 1)]
        out = layer(
            chunk, attention_mask=valid.long(), cache=cache, positions=pos.masked_fill(~valid, 0)
        )
        for r in range(2):
            got[r].append(out[r, : int(take[r])])
        length += take
    for r in range(2):
        torch.testing.assert_close(torch.cat(got[r]), full[r], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", [c for c in CASES if not c[1].get("causal")], ids=case_id)
def test_a_bidirectional_layer_has_no_cache(case):
    name, opts = case
    with pytest.raises(ValueError, match=r"not causal|no incremental cache"):
        make(name, opts).new_cache()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_eval_is_deterministic(case):
    name, opts = case
    layer = make(name, opts)
    x = torch.randn(2, 9, HIDDEN, dtype=torch.float64)
    assert torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gradcheck(case):
    name, opts = case
    layer = make(name, opts)
    n = 8
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, n, dtype=torch.long)
    mask[:, -2:] = 0
    glob = _glob(name, opts, 1, n)
    assert torch.autograd.gradcheck(
        lambda t: layer(t, attention_mask=mask, global_attention_mask=glob), (x,)
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_float32_runs_and_is_finite(case):
    name, opts = case
    layer = make(name, opts).float()
    x = torch.randn(2, 21, HIDDEN)
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, 15:] = False
    out = layer(x, attention_mask=mask)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_non_finite_padding_never_reaches_a_real_output(case):
    """NaN and inf at padding positions: the real outputs equal those of finite padding."""
    name, opts = case
    layer = make(name, opts)
    x = torch.randn(2, 13, HIDDEN, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    glob = _glob(name, opts, 2, 13)
    clean = layer(x, attention_mask=mask, global_attention_mask=glob)
    x[1, 9:11] = float("nan")
    x[1, 11:] = float("inf")
    dirty = layer(x, attention_mask=mask, global_attention_mask=glob)
    assert torch.equal(dirty, clean)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_half_precision_runs_and_follows_fp32(case, dtype):
    """Every mechanism in fp16 and bf16 (masking constants from the dtype's range), close to
    the same layer in fp32."""
    name, opts = case
    layer = make(name, opts).float()
    x = torch.randn(2, 21, HIDDEN)
    mask = torch.ones(2, 21, dtype=torch.bool)
    mask[1, 15:] = False
    want = layer(x, attention_mask=mask)
    got = layer.to(dtype)(x.to(dtype), attention_mask=mask)
    assert got.dtype == dtype and torch.isfinite(got).all()
    if name == "lsh":  # a rounding can move a token to another bucket: rows may differ
        assert (got.float() - want).abs().mean() < 0.02
    else:
        torch.testing.assert_close(got.float(), want, rtol=0.1, atol=0.05)


def _ungrouped_twin(layer, name, opts):
    """The same layer with every key/value head repeated for its query heads (the
    definition of grouped-query attention): KV -> H heads, weights copied."""
    twin = make(name, {k: v for k, v in opts.items() if k != "num_key_value_heads"})
    groups, d = layer.kv_groups, layer.head_dim
    state = {}
    for key, w in layer.state_dict().items():
        want = twin.state_dict()[key].shape
        if w.shape != want:  # a key/value projection: (KV * D, ...) -> (H * D, ...)
            w = w.unflatten(0, (-1, d)).repeat_interleave(groups, 0).flatten(0, 1)
        state[key] = w
    twin.load_state_dict(state)
    return twin


GQA = [c for c in CASES if c[1].get("num_key_value_heads")]


def test_every_grouped_query_mechanism_has_a_case():
    """Every mechanism that takes num_key_value_heads, causal where it can be."""
    takes = {m for m in attention.mechanisms() if "num_key_value_heads" in attention.options(m)}
    shared = {m for m in takes if attention.get(m).shared_qk}
    causal = {m for m in takes - shared if attention.get(m).supports_causal}
    assert causal <= {name for name, opts in GQA if opts.get("causal")}
    assert takes - shared <= {name for name, _ in GQA}


@pytest.mark.parametrize("case", GQA, ids=case_id)
def test_grouped_query_equals_repeated_key_value_heads(case):
    """Oracle: a layer with KV key/value heads == the ungrouped layer whose key/value
    weights are each KV head repeated H / KV times; and it has fewer weights."""
    name, opts = case
    layer = make(name, opts)
    assert layer.key.weight.shape[0] == opts["num_key_value_heads"] * layer.head_dim
    twin = _ungrouped_twin(layer, name, opts)
    x = torch.randn(2, 13, HIDDEN, dtype=torch.float64)
    mask = torch.ones(2, 13, dtype=torch.long)
    mask[1, 9:] = 0
    glob = _glob(name, opts, 2, 13)
    want = twin(x, attention_mask=mask, global_attention_mask=glob)
    torch.testing.assert_close(
        layer(x, attention_mask=mask, global_attention_mask=glob), want, rtol=1e-10, atol=1e-10
    )
    if glob is not None:  # many global tokens (G * H >= hidden): the unfolded global path
        many = mask.clone()
        many[:, 10:] = 0
        torch.testing.assert_close(
            layer(x, attention_mask=mask, global_attention_mask=many),
            twin(x, attention_mask=mask, global_attention_mask=many),
            rtol=1e-10,
            atol=1e-10,
        )
    other = _ungrouped_twin(layer, name, opts)  # different key weights differ: it can fail
    with torch.no_grad():
        other.key.weight[layer.head_dim :] += 1.0
    assert not torch.allclose(other(x, attention_mask=mask, global_attention_mask=glob), want)


@pytest.mark.parametrize("case", [c for c in GQA if c[1].get("causal")], ids=case_id)
def test_grouped_query_cache_stores_key_value_heads(case):
    name, opts = case
    layer = make(name, opts)
    cache = layer.new_cache()
    x = torch.randn(2, 7, HIDDEN, dtype=torch.float64)
    layer(x, cache=cache, positions=torch.arange(7).expand(2, 7))
    k = cache.k
    assert k.shape[1] == opts["num_key_value_heads"] < HEADS


def test_lsh_refuses_grouped_query_attention():
    with pytest.raises(ValueError, match="shares one projection for queries and keys"):
        make("lsh", {"num_key_value_heads": 1})
    with pytest.raises(ValueError, match="positive divisor of num_heads=2"):
        make("full", {"num_key_value_heads": 3})


def test_every_registered_mechanism_is_covered():
    names = {name for name, _ in CASES}
    assert names == set(attention.mechanisms())


def test_the_registry_answers_from_the_classes():
    """The baseline and the sequence-parallel mechanisms are what the classes say, never a
    list of names; a class that says it shards has its own attend_sharded."""
    assert attention.baseline() == "full"
    sharded = set(attention.sequence_parallel())
    assert sharded == {"full", "longformer", "bigbird", "linformer", "local"}
    for m in sharded:
        assert attention.get(m).attend_sharded is not SelfAttention.attend_sharded, m
    with pytest.raises(ValueError, match=r"no sequence-parallel form.*sequence_parallel\(\)"):
        SelfAttention.attend_sharded(attention.build("lsh", 8, 2), None, None, None, None)
