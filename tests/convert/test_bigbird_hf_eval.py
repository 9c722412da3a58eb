"""BigBird's `random_source="hf-eval"`: the blocks Hugging Face's layer uses in eval mode.

Oracles: (1) dense softmax attention where each key counts as many times as its block occurs
in the query block's row of the layout (block 0: once as global, r times as "random"), fp64;
(2) HF's `BigBirdBlockSparseAttention` itself with the same projections.
"""

from __future__ import annotations

import pytest
import torch

from longseq import attention
from longseq.attention.bigbird import hf_eval_layout

H, HID, B, R = 4, 32, 4, 2  # heads, hidden, block size, random blocks


def layer(**opts) -> attention.SelfAttention:
    torch.manual_seed(0)
    return attention.build(
        "bigbird", HID, H, block_size=B, num_random_blocks=R, random_source="hf-eval", **opts
    )


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
def test_equals_dense_attention_with_block_zero_counted_r_plus_one_times(n, lengths) -> None:
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


def test_short_inputs_get_full_attention() -> None:
    lay = layer().double()
    n = (5 + 2 * R) * B  # the longest input HF runs as original_full
    x = torch.randn(2, n, HID, dtype=torch.float64)
    real = torch.arange(n) < torch.tensor([n, 11])[:, None]
    full = attention.build("full", HID, H).double()
    full.load_state_dict(lay.state_dict())
    torch.testing.assert_close(lay(x, real.long()), full(x, real.long()))
    assert bool(lay.pattern(n).all())


def test_matches_hugging_face_block_sparse_layer() -> None:
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
        {"random_source": "numpy"},
        {"random_source": "hf-eval", "variant": "etc"},
        {"random_source": "hf-eval", "num_global_blocks": 1},
        {"random_source": "hf-eval", "num_sliding_blocks": 5},
        {"random_source": "hf-eval", "causal": True},
    ],
)
def test_options_hf_cannot_have_are_refused(opts) -> None:
    with pytest.raises(ValueError, match="random_source"):
        attention.build("bigbird", HID, H, block_size=B, **opts)
