"""Bad input gets a clear error that names the problem and the fix."""

from __future__ import annotations

import pytest
import torch
from cases import CASES, HEADS, HIDDEN

from longseq import attention


def layers():
    return [(n, attention.build(n, HIDDEN, HEADS, **CASES[n][0])) for n in attention.mechanisms()]


def test_unknown_mechanism_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: full, longformer"):
        attention.build("sparse", HIDDEN, HEADS)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match=r"valid options: .*causal"):
        attention.build("full", HIDDEN, HEADS, windw=4)


def test_hidden_not_divisible_by_heads():
    with pytest.raises(ValueError, match="not divisible"):
        attention.build("full", 10, 3)


@pytest.mark.parametrize("name_layer", layers(), ids=lambda p: p[0])
class TestEveryLayer:
    def test_wrong_rank(self, name_layer):
        _, layer = name_layer
        with pytest.raises(ValueError, match=r"\(batch, seq, hidden\)"):
            layer(torch.randn(8, HIDDEN))

    def test_wrong_hidden_size(self, name_layer):
        _, layer = name_layer
        with pytest.raises(ValueError, match="hidden size 12"):
            layer(torch.randn(1, 8, 12))

    def test_mask_wrong_shape(self, name_layer):
        _, layer = name_layer
        with pytest.raises(ValueError, match="attention_mask must have shape"):
            layer(torch.randn(2, 8, HIDDEN), attention_mask=torch.ones(2, 7))

    def test_mask_wrong_dtype(self, name_layer):
        _, layer = name_layer
        with pytest.raises(TypeError, match="bool or integer"):
            layer(torch.randn(2, 8, HIDDEN), attention_mask=torch.ones(2, 8))

    def test_mask_not_binary(self, name_layer):
        _, layer = name_layer
        with pytest.raises(ValueError, match="only 0 and 1"):
            layer(torch.randn(1, 8, HIDDEN), attention_mask=torch.full((1, 8), 2))

    def test_sequence_with_no_real_token(self, name_layer):
        _, layer = name_layer
        mask = torch.ones(2, 8, dtype=torch.long)
        mask[1] = 0
        with pytest.raises(ValueError, match=r"no real token in sequence\(s\) \[1\]"):
            layer(torch.randn(2, 8, HIDDEN), attention_mask=mask)

    def test_global_mask_where_unsupported_or_on_padding(self, name_layer):
        name, layer = name_layer
        glob = torch.zeros(1, 8, dtype=torch.long)
        glob[0, 7] = 1
        mask = torch.ones(1, 8, dtype=torch.long)
        mask[0, 6:] = 0
        if not attention.get(name).supports_global:
            with pytest.raises(ValueError, match="has no global tokens"):
                layer(torch.randn(1, 8, HIDDEN), global_attention_mask=glob)
        else:
            with pytest.raises(ValueError, match="marks padding positions"):
                layer(torch.randn(1, 8, HIDDEN), attention_mask=mask, global_attention_mask=glob)


def _int_options():
    for name in attention.mechanisms():
        for opt, default in attention.options(name).items():
            if isinstance(default, int) and not isinstance(default, bool) and opt != "layer_idx":
                yield name, opt


@pytest.mark.parametrize(("name", "opt"), list(_int_options()), ids=lambda x: str(x))
def test_integer_options_refuse_bools_and_floats(name, opt):
    """One validation style: a size or count given as True or 2.5 is an error naming it."""
    base = {"max_seq_len": 16} if name == "linformer" and opt != "max_seq_len" else {}
    for bad in (True, 2.5):
        with pytest.raises(ValueError, match=opt):
            attention.build(name, 16, 2, **base, **{opt: bad})
