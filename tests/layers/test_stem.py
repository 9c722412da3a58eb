"""The convolutional stem (`longseq.layers.stem`): which inputs each attention position holds,
how the output comes back to one vector per input, and that padding never feeds a real input.
"""

from __future__ import annotations

import pytest
import torch

from longseq.layers.stem import ConvStem
from longseq.models import ModelConfig, build_model
from longseq.models.base import LongseqModel


def _model(attention: str = "full", **kw) -> LongseqModel:
    cfg = ModelConfig(
        architecture="token-classification",
        attention=attention,
        attention_options=kw.pop("attention_options", {}),
        vocab_size=9,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=32,
        max_length=256,
        position="rotary",
        conv_layers=kw.pop("conv_layers", 2),
        conv_kernel=kw.pop("conv_kernel", 5),
        conv_pool=kw.pop("conv_pool", 8),
        num_labels=3,
        dropout=0.0,
        **kw,
    )
    return build_model(cfg, seed=0).eval()


def test_position_i_holds_inputs_i_p_to_i_p_plus_p():
    """The pooling is a linear map of exactly the P stem features of its inputs, in order
    (checked against an einsum over the reshaped features)."""
    torch.manual_seed(0)
    stem = ConvStem(hidden=6, layers=1, kernel=3, pool=4).double()
    x = torch.randn(2, 20, 6, dtype=torch.double)
    tokens, mask, h = stem(x)
    assert tokens.shape == (2, 5, 6) and mask is None and h.shape == (2, 6, 20)
    w, b = stem.down.weight, stem.down.bias  # (out, in, P)
    groups = h.view(2, 6, 5, 4)  # (B, in, position, P)
    expected = torch.einsum("oip,bitp->bto", w, groups) + b
    torch.testing.assert_close(tokens, expected)


def test_unpool_gives_each_input_its_position_and_its_own_features():
    """With the mixing convolution zeroed, input j gets LN(t[j // P]): the repeat is aligned;
    and the mixing reads the input's own stem features (a change there moves only nearby
    outputs, within the kernel)."""
    torch.manual_seed(0)
    stem = ConvStem(hidden=4, layers=1, kernel=3, pool=4).double()
    t = torch.randn(1, 5, 4, dtype=torch.double)
    skip = torch.randn(1, 4, 20, dtype=torch.double)
    with torch.no_grad():
        stem.up.weight.zero_()
        stem.up.bias.zero_()
    out = stem.unpool(t, skip, 18)
    assert out.shape == (1, 18, 4)
    ln = torch.nn.functional.layer_norm(t, (4,))
    torch.testing.assert_close(out, ln.repeat_interleave(4, dim=1)[:, :18])
    torch.manual_seed(1)
    stem = ConvStem(hidden=4, layers=1, kernel=3, pool=4).double()
    a = stem.unpool(t, skip, 20)
    skip2 = skip.clone()
    skip2[0, :, 10] += 1.0
    moved = (stem.unpool(t, skip2, 20) - a).abs().sum(-1)[0]
    assert set(torch.nonzero(moved > 1e-12).flatten().tolist()) == {9, 10, 11}


def test_the_stem_and_model_have_exact_gradients():
    torch.manual_seed(0)
    stem = ConvStem(hidden=3, layers=2, kernel=3, pool=2).double()
    x = torch.randn(1, 7, 3, dtype=torch.double, requires_grad=True)

    def f(x):
        tokens, mask, h = stem(x)
        return stem.unpool(torch.tanh(tokens), h, 7, mask)

    assert torch.autograd.gradcheck(f, (x,))


@pytest.mark.parametrize(
    "attention, options",
    [
        ("full", {}),
        ("longformer", {"window": 8}),
        ("bigbird", {"block_size": 4}),
        ("linformer", {}),
        ("lsh", {"chunk_length": 4}),
    ],
)
def test_padding_never_reaches_a_real_input(attention, options):
    """A batch right-padded by 21 inputs (not a multiple of P) gives the real inputs the same
    outputs as the unpadded sequence, under every mechanism."""
    model = _model(attention, attention_options=options)
    torch.manual_seed(0)
    ids = torch.randint(5, 9, (2, 203))
    padded = torch.cat([ids, torch.zeros(2, 21, dtype=torch.long)], 1)
    mask = torch.ones_like(padded)
    mask[:, 203:] = 0
    with torch.no_grad():
        plain = model(ids).logits
        both = model(padded, attention_mask=mask).logits[:, :203]
    assert plain.shape == (2, 203, 3)
    torch.testing.assert_close(both, plain, atol=1e-5, rtol=1e-5)


def test_a_position_reaches_as_far_as_its_window_times_the_pool():
    """Longformer, window 4 (2 positions either side) over pool 8, 2 layers, kernel 5: input
    3 lies in position 0, which two layers carry to positions 0..4, i.e. inputs 0..39; the
    mixing convolution on the way back adds 2 inputs. Everything beyond input 41 is
    bit-for-bit unchanged."""
    model = _model("longformer", attention_options={"window": 4})
    torch.manual_seed(0)
    ids = torch.randint(5, 9, (1, 256))
    other = ids.clone()
    other[0, 3] = 5 if int(ids[0, 3]) != 5 else 6
    with torch.no_grad():
        moved = (model(other).logits - model(ids).logits).abs().amax(-1)[0]
    reached = torch.nonzero(moved > 0).flatten()
    assert reached.tolist() == list(range(42))


def test_config_checks_and_save_load(tmp_path):
    model = _model()
    assert model.pad_multiple() == 8 and model.config.positions_length == 32
    model.save_pretrained(tmp_path)
    from longseq.models import from_pretrained

    again = from_pretrained(tmp_path).eval()
    ids = torch.randint(5, 9, (1, 100))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)
    for bad, match in (
        ({"conv_kernel": 4}, "odd"),
        ({"conv_pool": 0}, ">= 1"),
        ({"conv_layers": -1}, ">= 0"),
        ({"causal_attention": True}, "encoders, not causal"),
        ({"type_vocab_size": 2}, "segment"),
    ):
        with pytest.raises(ValueError, match=match):
            _model(**bad)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.randint(5, 9, (1, 257)))
    from longseq.convert.to_hf import hf_family

    with pytest.raises(ValueError, match="convolutional stem"):
        hf_family(model.config)
