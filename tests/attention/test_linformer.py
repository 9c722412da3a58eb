"""Linformer against its oracles: dense attention when E = F = I, and the explicit formula."""

from __future__ import annotations

import pytest
import torch
from reference import layer_with_mask
from torch import nn

from longseq import attention
from longseq.attention import ops
from longseq.attention.linformer import SHARING, LinformerAttention, LinformerProjection

HIDDEN, HEADS = 12, 3
TOL = {"rtol": 1e-10, "atol": 1e-10}


def make(sharing="none", k=5, max_seq_len=16, **kw) -> LinformerAttention:
    layer = attention.build(
        "linformer", HIDDEN, HEADS, k=k, max_seq_len=max_seq_len, sharing=sharing, **kw
    )
    return layer.double().eval()


def e_f(layer: LinformerAttention, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """E and F as (H, k, n), whatever the sharing."""
    e, f = layer.projection.matrices(n)
    return e.expand(HEADS, *e.shape[-2:]), f.expand(HEADS, *f.shape[-2:])


def explicit(layer: LinformerAttention, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """softmax(Q (E K)^T) (F V) written out, padding K, V zeroed, E, F cut to the padded length."""
    q, k, v = layer.project(x)  # q already carries 1/sqrt(d)
    keep = real[:, None, :, None]
    k, v = k * keep, v * keep
    e, f = e_f(layer, x.shape[1])
    pk = torch.stack([e[h] @ k[:, h] for h in range(HEADS)], dim=1)
    pv = torch.stack([f[h] @ v[:, h] for h in range(HEADS)], dim=1)
    ctx = torch.softmax(q @ pk.transpose(-1, -2), dim=-1) @ pv
    return layer.out(ops.merge_heads(ctx)) * real[..., None]


def naive_no_padding(layer: LinformerAttention, x: torch.Tensor) -> torch.Tensor:
    """The formula with padding tokens' keys and values left in: what a careless kernel does."""
    return explicit(layer, x, torch.ones(x.shape[:2], dtype=torch.bool))


def grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    w = torch.randn_like(out, generator=torch.Generator().manual_seed(7))
    return torch.autograd.grad((out * w).sum(), inputs)


def assert_same_with_grads(layer, a_fn, b_fn, x, with_projection=True):
    x = x.clone().requires_grad_(True)
    params = [
        x,
        *(
            p
            for n, p in layer.named_parameters()
            if with_projection or not n.startswith("projection.")
        ),
    ]
    a, b = a_fn(x), b_fn(x)
    torch.testing.assert_close(a, b, **TOL)
    for ga, gb in zip(grads(a, params), grads(b, params), strict=True):
        torch.testing.assert_close(ga, gb, **TOL)


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("max_seq_len", [9, 13])
def test_identity_projection_equals_dense(sharing, max_seq_len):
    n = 9
    layer = make(sharing, k=n, max_seq_len=max_seq_len)
    with torch.no_grad():
        for p in layer.projection.parameters():
            p.copy_(torch.eye(n, max_seq_len, dtype=p.dtype).expand_as(p))
    x = torch.randn(2, n, HIDDEN, dtype=torch.float64)
    allowed = torch.ones(1, 1, n, n, dtype=torch.bool)
    dense = lambda t: layer_with_mask(layer, t, allowed)  # noqa: E731
    assert_same_with_grads(layer, layer, dense, x, with_projection=False)


def test_random_projection_differs_from_dense():
    n = 9
    layer = make(k=n, max_seq_len=n)
    x = torch.randn(1, n, HIDDEN, dtype=torch.float64)
    dense = layer_with_mask(layer, x, torch.ones(1, 1, n, n, dtype=torch.bool))
    assert not torch.allclose(layer(x), dense, atol=1e-3)


@pytest.mark.parametrize("sharing", SHARING)
def test_equals_explicit_formula_with_padding(sharing):
    layer = make(sharing, k=6, max_seq_len=16)
    lengths = [11, 4, 8]  # shorter and longer than k
    n = 11
    x = torch.randn(len(lengths), n, HIDDEN, dtype=torch.float64)
    real = torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]
    assert_same_with_grads(
        layer, lambda t: layer(t, attention_mask=real), lambda t: explicit(layer, t, real), x
    )


@pytest.mark.parametrize("sharing", ["none", "kv"])
def test_any_mask_equals_each_sequence_alone(sharing):
    # left padding and holes: real tokens keep their rank among real tokens
    layer = make(sharing, k=4, max_seq_len=10)
    n = 12  # longer than max_seq_len, but no sequence has more than 10 real tokens
    x = torch.randn(3, n, HIDDEN, dtype=torch.float64, requires_grad=True)
    real = torch.ones(3, n, dtype=torch.bool)
    real[0, :4] = False
    real[1, [0, 3, 4, 10, 11]] = False
    real[2, 5:] = False
    out = layer(x, attention_mask=real)
    assert torch.all(out[~real] == 0)
    alone = [explicit(layer, x[i : i + 1, real[i]], real[i : i + 1, real[i]]) for i in range(3)]
    for i in range(3):
        torch.testing.assert_close(out[i, real[i]], alone[i][0], **TOL)
    params = [x, *layer.parameters()]
    got = grads(out[real], params)
    want = grads(torch.cat([a[0] for a in alone]), params)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOL)


def test_padding_not_handled_would_be_caught():
    layer = make(k=5, max_seq_len=16)
    x = torch.randn(1, 10, HIDDEN, dtype=torch.float64)
    real = torch.ones(1, 10, dtype=torch.bool)
    real[0, 7:] = False
    out = layer(x, attention_mask=real)
    torch.testing.assert_close(out, explicit(layer, x, real), **TOL)
    naive = naive_no_padding(layer, x) * real[..., None]
    assert (out - naive).abs().max() > 1e-3
    # left padding without moving real tokens to the front meets the wrong columns of E, F
    left, xl = real.roll(3, dims=1), x.roll(3, dims=1)
    packed = layer(xl, attention_mask=left)
    torch.testing.assert_close(packed.roll(-3, dims=1), out, **TOL)
    assert (packed - explicit(layer, xl, left)).abs().max() > 1e-3


def test_sharing_shapes_and_parameter_counts():
    k, L = 5, 16
    counts = {s: sum(p.numel() for p in make(s, k, L).projection.parameters()) for s in SHARING}
    assert counts == {
        "none": 2 * HEADS * k * L,
        "headwise": 2 * k * L,
        "kv": k * L,
        "layerwise": k * L,
    }
    kv = make("kv", k, L)
    e, f = kv.projection.matrices(L)
    assert kv.projection.f is None and e.data_ptr() == f.data_ptr()
    assert make("none", k, L).projection.e.shape == (HEADS, k, L)


def test_headwise_is_none_with_equal_heads_and_kv_is_headwise_with_e_equal_f():
    x = torch.randn(2, 9, HIDDEN, dtype=torch.float64)
    real = torch.ones(2, 9, dtype=torch.bool)
    real[1, 6:] = False
    head, per_head, kv = make("headwise"), make("none"), make("kv")
    for other in (per_head, kv):
        for name in ("query", "key", "value", "out"):
            getattr(other, name).load_state_dict(getattr(head, name).state_dict())
    with torch.no_grad():
        per_head.projection.e.copy_(head.projection.e.expand_as(per_head.projection.e))
        per_head.projection.f.copy_(head.projection.f.expand_as(per_head.projection.f))
        kv.projection.e.copy_(head.projection.e)
    ref = head(x, attention_mask=real)
    torch.testing.assert_close(per_head(x, attention_mask=real), ref, **TOL)
    assert (kv(x, attention_mask=real) - ref).abs().max() > 1e-3  # F differs from E in head
    with torch.no_grad():
        head.projection.f.copy_(head.projection.e)
    torch.testing.assert_close(kv(x, attention_mask=real), head(x, attention_mask=real), **TOL)


def test_layerwise_projection_is_shared():
    proj = LinformerProjection(5, 16)
    a, b = (
        LinformerAttention(HIDDEN, HEADS, k=5, max_seq_len=16, sharing="layerwise", projection=proj)
        for _ in range(2)
    )
    model = nn.Sequential(a, b).double()
    assert a.projection is b.projection is proj
    assert proj.e.dtype == torch.float64  # converting the model converted the shared tensor
    own = sum(p.numel() for p in a.parameters()) - proj.e.numel()
    assert sum(p.numel() for p in model.parameters()) == 2 * own + proj.e.numel()
    with torch.no_grad():
        proj.e.mul_(2.0)  # one update changes both layers
    torch.testing.assert_close(a.projection.e, b.projection.e, rtol=0, atol=0)
    # without a projection, each layerwise layer makes its own
    assert make("layerwise").projection is not make("layerwise").projection


def test_layerwise_grad_is_sum_over_layers():
    proj = LinformerProjection(4, 12).double()
    layers = [
        LinformerAttention(
            HIDDEN, HEADS, k=4, max_seq_len=12, sharing="layerwise", projection=proj
        ).double()
        for _ in range(2)
    ]
    x, y = (torch.randn(1, 7, HIDDEN, dtype=torch.float64) for _ in range(2))
    (g0,) = torch.autograd.grad(layers[0](x).sum(), proj.e)
    (g1,) = torch.autograd.grad(layers[1](y).sum(), proj.e)
    (layers[0](x).sum() + layers[1](y).sum()).backward()
    torch.testing.assert_close(proj.e.grad, g0 + g1, **TOL)


def test_projection_with_other_sharing_modes():
    proj = LinformerProjection.for_sharing("none", 5, 16, HEADS)
    a = LinformerAttention(HIDDEN, HEADS, k=5, max_seq_len=16, projection=proj)
    b = LinformerAttention(HIDDEN, HEADS, k=5, max_seq_len=16, projection=proj)
    assert a.projection is b.projection and proj.e.shape == (HEADS, 5, 16)
    with pytest.raises(ValueError, match=r"does not match .*for_sharing\('headwise'"):
        LinformerAttention(HIDDEN, HEADS, k=5, max_seq_len=16, sharing="headwise", projection=proj)
    with pytest.raises(ValueError, match="does not match"):
        LinformerAttention(HIDDEN, HEADS, k=4, max_seq_len=16, projection=proj)
    with pytest.raises(TypeError, match="LinformerProjection"):
        LinformerAttention(HIDDEN, HEADS, projection=nn.Linear(2, 2))


def test_initialisation_is_uniform_within_one_over_sqrt_k():
    p = LinformerProjection(16, 400, heads=2, share_kv=False)
    for t in (p.e, p.f):
        assert t.abs().max() <= 0.25 and t.abs().max() > 0.24
        assert abs(t.std().item() - 0.25 / 3**0.5) < 0.01


def test_dropout_only_in_training():
    layer = make(dropout=0.5)
    x = torch.randn(1, 9, HIDDEN, dtype=torch.float64)
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.allclose(layer(x), layer(x))


def test_options_are_listed():
    opts = attention.options("linformer")
    assert {
        "k": 256,
        "max_seq_len": 4096,
        "sharing": "none",
        "projection": None,
    }.items() <= opts.items()


# --- errors ---------------------------------------------------------------------------------


def test_causal_is_rejected_with_the_reason_and_a_fix():
    with pytest.raises(ValueError, match=r"cannot be causal.*mix all positions.*'longformer'"):
        attention.build("linformer", HIDDEN, HEADS, causal=True)


@pytest.mark.parametrize(
    ("opts", "match"),
    [
        ({"k": 0}, r"k \(projected length\) must be an integer >= 1, got 0"),
        ({"k": 2.5}, "must be an integer >= 1, got 2.5"),
        ({"max_seq_len": 0}, "max_seq_len must be an integer >= 1, got 0"),
        ({"k": 20, "max_seq_len": 16}, "k=20 is larger than max_seq_len=16.*k <= max_seq_len"),
        ({"sharing": "heads"}, r"unknown sharing='heads'.*'none', 'headwise', 'kv', 'layerwise'"),
    ],
)
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        attention.build("linformer", HIDDEN, HEADS, **{"k": 4, "max_seq_len": 16, **opts})


def test_sequence_longer_than_max_seq_len():
    layer = make(k=4, max_seq_len=8)
    with pytest.raises(ValueError, match=r"length 9 exceeds max_seq_len=8.*max_seq_len >= 9"):
        layer(torch.randn(1, 9, HIDDEN, dtype=torch.float64))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 8:] = 0
    mask[0, 9:] = 0
    with pytest.raises(ValueError, match=r"length 9 exceeds max_seq_len=8"):
        layer(torch.randn(2, 10, HIDDEN, dtype=torch.float64), attention_mask=mask)
    mask[0, 8:] = 0  # padded to 10, but no sequence is longer than 8: fine
    out = layer(torch.randn(2, 10, HIDDEN, dtype=torch.float64), attention_mask=mask)
    assert out.shape == (2, 10, HIDDEN)
