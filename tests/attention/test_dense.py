"""Full attention against the textbook formula."""

from __future__ import annotations

import pytest
import torch
from reference import layer_with_mask

from longseq import attention
from longseq.attention import patterns


@pytest.mark.parametrize("causal", [False, True])
def test_full_equals_textbook(causal):
    layer = attention.build("full", 24, 3, causal=causal).double()
    n = 10
    x = torch.randn(2, n, 24, dtype=torch.float64)
    real = torch.ones(2, n, dtype=torch.bool)
    real[1, 6:] = False
    allowed = real[:, None, None, :] & (
        patterns.materialize(patterns.causal(), n) if causal else True
    )
    expected = layer_with_mask(layer, x, allowed, real)
    torch.testing.assert_close(layer(x, attention_mask=real), expected, rtol=1e-10, atol=1e-10)
