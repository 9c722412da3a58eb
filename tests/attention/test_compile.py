"""torch.compile of every mechanism's layer equals eager, at several lengths (odd, longer).

The default (dynamic) shapes: the first length compiles static, the second recompiles with a
symbolic length, later ones reuse it. Before, a Longformer layer failed to lower at its second
length, and LSH returned NaN or 1e35 (its kernel now runs eagerly inside a compiled model).
Needs a C compiler for Inductor's CPU code (skipped without one).
"""

from __future__ import annotations

import shutil

import pytest
import torch
from cases import CASES, HEADS, HIDDEN

from longseq import attention

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)

# one bidirectional and one causal configuration per mechanism (where it has one)
PICKED = [
    (name, opts)
    for name, lst in CASES.items()
    for opts in (
        next((o for o in lst if not o.get("causal")), None),
        next((o for o in lst if o.get("causal")), None),
    )
    if opts is not None
]


@pytest.mark.parametrize(
    "case", PICKED, ids=lambda c: c[0] + ("-causal" if c[1].get("causal") else "")
)
def test_compiled_layer_equals_eager(case):
    name, opts = case
    torch.manual_seed(0)
    opts = {**opts, "max_seq_len": 300} if name == "linformer" else opts
    layer = attention.build(name, HIDDEN, HEADS, **opts).eval()
    compiled = torch.compile(layer)
    torch._dynamo.reset()
    for n in (37, 100, 257):
        x = torch.randn(2, n, HIDDEN)
        mask = torch.ones(2, n, dtype=torch.long)
        mask[1, n - 7 :] = 0
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, mask), layer(x, mask), rtol=1e-5, atol=1e-5)
