"""torch.compile of every mechanism's layer equals eager, at several lengths (odd, longer).

The default (dynamic) shapes: the first length compiles static, the second recompiles with a
symbolic length, later ones reuse it. Before, a Longformer layer failed to lower at its second
length, and LSH returned NaN or 1e35 (its kernel now runs eagerly inside a compiled model).
Needs a C compiler for Inductor's CPU code (skipped without one).

Each compile costs seconds of CPU with a warm Inductor cache and tens of seconds with a cold
one (BigBird 77 s), so the default run takes Longformer through both steps (lengths 37 and
100) with Dynamo's capture only (no Inductor); the schedule (`pytest -m slow`,
docs/testing.md) takes a bidirectional and a causal configuration of every mechanism through
three lengths with Inductor.
(A symbolic length from the first call saved no time: symbolic graphs take longer to compile.)
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
from cases import CASES, HEADS, HIDDEN

from longseq import attention

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)

Case = tuple[str, dict[str, Any]]


def _first(options: list[dict[str, Any]], causal: bool) -> dict[str, Any] | None:
    return next((o for o in options if bool(o.get("causal")) == causal), None)


# one bidirectional and one causal configuration per mechanism (where it has one)
PICKED: list[Case] = [
    (name, opts)
    for name, lst in CASES.items()
    for opts in (_first(lst, False), _first(lst, True))
    if opts is not None
]
# the default run: Longformer, bidirectional, through both steps, captured by Dynamo and run
# eagerly. Inductor's code generation with a cold cache (a fresh clone, as CI) costs 16-77 s of
# CPU per mechanism, 217 s for one configuration of each (65 s for Longformer's alone, most
# of it Inductor's start-up), which CI's 5 minutes cannot hold. Every mechanism, both ways,
# compiles with Inductor on the schedule.
DEFAULT: list[Case] = [("longformer", _first(CASES["longformer"], False) or {})]


def _id(case: Case) -> str:
    return case[0] + ("-causal" if case[1].get("causal") else "")


def _compiled_equals_eager(case: Case, lengths: tuple[int, ...], backend: str = "inductor") -> None:
    name, opts = case
    torch.manual_seed(0)
    opts = {**opts, "max_seq_len": 300} if name == "linformer" else opts
    layer = attention.build(name, HIDDEN, HEADS, **opts).eval()
    compiled = torch.compile(layer, backend=backend)
    torch._dynamo.reset()
    for n in lengths:
        x = torch.randn(2, n, HIDDEN)
        mask = torch.ones(2, n, dtype=torch.long)
        mask[1, n - 7 :] = 0
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, mask), layer(x, mask), rtol=1e-5, atol=1e-5)


def test_the_schedule_covers_every_mechanism_both_ways() -> None:
    assert {name for name, _ in PICKED} == set(CASES)
    for name, lst in CASES.items():
        ways = {bool(o.get("causal")) for o in lst}
        assert {bool(o.get("causal")) for n, o in PICKED if n == name} == ways, name
    assert all(case in PICKED for case in DEFAULT)


@pytest.mark.parametrize("case", DEFAULT, ids=_id)
def test_compiled_layer_equals_eager(case: Case) -> None:
    """Dynamo's capture (graph breaks, guards, the symbolic length) without Inductor's code
    generation, whose cold start alone (65 s of CPU in a fresh clone) CI cannot hold."""
    _compiled_equals_eager(case, (37, 100), backend="eager")  # static, then a symbolic length


@pytest.mark.slow
@pytest.mark.parametrize("case", PICKED, ids=_id)
def test_compiled_layer_equals_eager_every_case(case: Case) -> None:
    _compiled_equals_eager(case, (37, 100, 257))
