"""backend="flex": every mask mechanism through FlexAttention equals its native kernel.

The oracle is the native kernel, itself checked against dense attention under the pattern
(test_<mechanism>.py); flex is built from the same patterns.py rules, so a wrong mask or
BlockMask shows as a difference here. The BlockMask builder is checked against torch's own
`create_block_mask`.

Cost: FlexAttention on CPU compiles (Inductor, C++: seconds to a minute per mask, cold cache);
uncompiled (`flex.eager()`), each call is a Dynamo capture (~2 s under load). The default run
keeps the cheap checks (options, refusals, the builder, the CPU backward refusal) and one
eager equality (Longformer with dilation, global tokens and padding); the full matrix, eager
and compiled, runs on the schedule (`pytest -m slow`, docs/testing.md).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import torch
from cases import CASES, HEADS, HIDDEN, case_id

from longseq import attention
from longseq.attention import flex

FLEX = [name for name in attention.mechanisms() if attention.get(name).flex_refusal is None]
MATRIX = [(name, opts) for name in FLEX for opts in CASES.get(name, [])]
needs_cc = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler"
)


def _pair(name: str, opts: dict[str, Any]) -> tuple[Any, Any]:
    torch.manual_seed(0)
    native = attention.build(name, HIDDEN, HEADS, **opts).eval()
    flexed = attention.build(name, HIDDEN, HEADS, backend="flex", **opts).eval()
    flexed.load_state_dict(native.state_dict())
    return native, flexed


def _inputs(name: str, opts: dict[str, Any], n: int) -> tuple[torch.Tensor, ...]:
    x = torch.randn(2, n, HIDDEN)
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - 5 :] = 0
    glob = None
    if attention.get(name).supports_global:  # (causal: attention sinks)
        glob = torch.zeros(2, n, dtype=torch.long)
        glob[:, 0] = 1
        glob[0, n // 2] = 1
    return x, mask, glob


def _flex_equals_native(name: str, opts: dict[str, Any], n: int) -> None:
    native, flexed = _pair(name, opts)
    x, mask, glob = _inputs(name, opts, n)
    with torch.no_grad():
        want = native(x, mask, glob)
        got = flexed(x, mask, glob)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_matrix_covers_the_mask_mechanisms() -> None:
    assert {"full", "longformer", "bigbird", "local"} <= set(FLEX)
    for name in ("full", "longformer", "bigbird", "local"):
        assert {bool(o.get("causal")) for n, o in MATRIX if n == name} == {False, True}
    assert any(o.get("variant") == "etc" for n, o in MATRIX if n == "bigbird")
    assert any(isinstance(o.get("dilation"), list) for n, o in MATRIX if n == "longformer")


def test_every_mechanism_takes_the_backend_option() -> None:
    for name in attention.mechanisms():
        assert attention.options(name)["backend"] == "native", name
        layer = attention.build(name, HIDDEN, HEADS, **dict(CASES[name][0]), backend="auto")
        assert not layer.runs_flex(torch.device("cpu")), name  # auto is native on CPU


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"backend must be one of \('native', 'flex', 'auto'\)"):
        attention.build("full", HIDDEN, HEADS, backend="triton")


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("linformer", "projections of the whole sequence"),
        ("lsh", "hashed buckets"),
        ("bigbird-hf", "repeats block 0"),
        ("local-hf", "wrap-around"),
        ("lsh-hf", "hashed buckets"),
    ],
)
def test_mechanisms_without_a_mask_refuse_flex(name: str, why: str) -> None:
    opts = {"max_seq_len": 24, "k": 5} if name == "linformer" else {}
    with pytest.raises(ValueError, match=rf"cannot use backend='flex': .*{why}"):
        attention.build(name, HIDDEN, HEADS, backend="flex", **opts)
    attention.build(name, HIDDEN, HEADS, backend="auto", **opts)  # auto: native for these


def test_flex_on_cpu_refuses_a_gradient_clearly() -> None:
    layer = attention.build("longformer", HIDDEN, HEADS, window=4, backend="flex")
    x = torch.randn(1, 9, HIDDEN)
    with pytest.raises(flex.FlexBackwardUnavailable, match=r"no backward on CPU.*backend='native'"):
        layer.eval()(x)  # the weights need gradients
    layer.train()
    with pytest.raises(ValueError, match="no attention dropout"):
        attention.build("full", HIDDEN, HEADS, dropout=0.1, backend="flex").train()(x)


@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_block_mask_equals_torchs_builder(case: tuple[str, dict[str, Any]]) -> None:
    """Our chunked BlockMask builder lists the same partial and full tiles as torch's
    `create_block_mask` (tiles of 2, so a 37-token input spans many, the last cut by its end)."""
    from torch.nn.attention.flex_attention import create_block_mask

    name, opts = case
    layer = attention.build(name, HIDDEN, HEADS, **opts)
    _, mask, glob = _inputs(name, opts, 37)
    real = mask.bool()
    fm = layer.flex_mask(real, None if glob is None else glob.bool())
    mod = flex._with_padding_rows(fm)
    nk = 37 + fm.q_offset
    ours = flex.build_block_mask(mod, 2, HEADS, 37, nk, torch.device("cpu"), block=2)
    theirs = create_block_mask(mod, 2, HEADS, 37, nk, device="cpu", BLOCK_SIZE=2)
    assert torch.equal(ours.to_dense(), theirs.to_dense())
    assert torch.equal(ours.full_kv_num_blocks, theirs.full_kv_num_blocks)
    if name == "full" and not opts.get("causal"):  # the full tiles are listed as such
        assert int(ours.full_kv_num_blocks.sum()) > 0


def test_flex_equals_native_longformer_eager() -> None:
    """The default run's equality: dilation per head, global tokens, padding (eager flex)."""
    with flex.eager():
        _flex_equals_native("longformer", {"window": 6, "dilation": [1, 2]}, 21)


@pytest.mark.slow
@pytest.mark.parametrize("case", MATRIX, ids=case_id)
def test_flex_equals_native_eager(case: tuple[str, dict[str, Any]]) -> None:
    with flex.eager():
        _flex_equals_native(*case, 37)


# Compiled: one bidirectional and one causal configuration per mechanism (each compile costs
# from tens of seconds to minutes of CPU: 268 s for a Longformer layer with 24 processes
# sharing 2 cores)
COMPILED = [
    next(c for c in MATRIX if c[0] == name and bool(c[1].get("causal")) == causal)
    for name in FLEX
    for causal in (False, True)
    if any(c[0] == name and bool(c[1].get("causal")) == causal for c in MATRIX)
]


@pytest.mark.slow
@needs_cc
@pytest.mark.parametrize("case", COMPILED, ids=case_id)
def test_flex_equals_native_compiled(case: tuple[str, dict[str, Any]]) -> None:
    """The compiled CPU kernel (Inductor), on a length that spans tiles and cuts the last."""
    torch._dynamo.reset()
    _flex_equals_native(*case, 300)


@pytest.mark.slow
def test_flex_model_equals_native() -> None:
    """A whole model's attention_options carry the backend (eager flex, eval)."""
    from longseq.models import ModelConfig, build_model

    def model(backend: str) -> Any:
        cfg = ModelConfig(
            architecture="causal-lm",
            attention="bigbird",
            attention_options={"block_size": 4, "num_random_blocks": 1, "backend": backend},
            hidden_size=16,
            num_layers=2,
            num_heads=2,
            intermediate_size=32,
            vocab_size=50,
            max_length=64,
        )
        return build_model(cfg, seed=0).eval()

    ids = torch.randint(0, 50, (2, 40))
    with torch.no_grad(), flex.eager():
        got = model("flex")(ids).logits
    want = model("native")(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
