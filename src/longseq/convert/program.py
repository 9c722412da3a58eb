"""longseq -> a traced program: `torch.export` (`.pt2`) or ONNX (`.onnx`), eval mode.

    from longseq.convert.program import export_program
    export_program(model, "out", "torch")   # out/model.pt2: torch.export.load(...).module()
    export_program(model, "out", "onnx")    # out/model.onnx: onnxruntime.InferenceSession

    longseq export MODEL OUT --format torch|onnx

The program takes `input_ids` and `attention_mask` (batch, seq) int64, plus
`global_attention_mask` for a model with global tokens (Longformer), and returns the model's
main outputs: `last_hidden_state` (encoder), `logits` (classification, LM heads) or
`start_logits` and `end_logits` (QA). Batch and sequence length are dynamic.

Lengths: a mechanism whose kernel cuts the sequence into blocks takes lengths that are a
multiple of its block (`length_multiple`) and at least `min_length` (a full block and its
halo in every layer), as export.json records; `fit(inputs, min_length, length_multiple)`
right-pads inputs to such a length (attention_mask 0), which never changes a real token's
output (the batch-invariance oracle); drop the padding's outputs afterwards. With every
length a multiple of the block, each length-dependent choice inside a kernel (block size,
halo blocks) is the same for all inputs and every shape is a product the trace can prove,
so one program serves every such length up to `max_length`. Full attention takes any length.

Value checks and fast paths that branch on a tensor's values are skipped while tracing
(`longseq.attention.ops.tracing`); the general path they guard computes the same.
Longformer's global tokens get `ops.TRACE_GLOBAL_SLOTS` (16) slots per row (their count is
data: the program keeps a fixed number, and a row with more is an error at run time). A
mechanism that cannot be traced says why in its `not_exportable` (BigBird, LSH).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention import ops
from longseq.models import LongseqModel

FORMATS = ("torch", "onnx")
FILES = {"torch": "model.pt2", "onnx": "model.onnx"}
ONNX_OPSET = 18


def outputs_of(model: LongseqModel) -> tuple[str, ...]:
    arch = model.config.architecture
    if arch == "encoder":
        return ("last_hidden_state",)
    if arch == "question-answering":
        return ("start_logits", "end_logits")
    return ("logits",)


def program_padding(model: LongseqModel) -> tuple[int, int]:
    """(the shortest length, the multiple) the program pads every input to (see the module
    docstring)."""
    need, multiple = 1, model.pad_multiple()
    for block in model.body.layers:
        layer = block.attn.attention
        need = max(need, layer.export_padding())
        multiple = math.lcm(multiple, layer.export_block())
    return -(-need // multiple) * multiple, multiple


class Program(nn.Module):
    """The traced function: pad, run the model, drop the padding's outputs."""

    def __init__(self, model: LongseqModel, pad: int, multiple: int = 1) -> None:
        super().__init__()
        self.model = model
        self.pad = pad
        self.multiple = multiple
        self.names = outputs_of(model)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        global_attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, ...]:
        extra = {}
        if global_attention_mask is not None:
            extra["global_attention_mask"] = global_attention_mask
        out = self.model(input_ids, attention_mask=attention_mask, **extra)
        return tuple(getattr(out, name) for name in self.names)


def fit(inputs: tuple[Tensor, ...], pad: int, multiple: int, pad_id: int = 0) -> tuple[Tensor, ...]:
    """Right-pad (batch, seq) inputs to a length the program takes: at least `pad`, a
    multiple of `multiple` (ids with `pad_id`, masks with 0). Real tokens' outputs are
    unchanged; drop the padding's outputs afterwards (`[:, :n]`)."""
    n = inputs[0].shape[1]
    length = -(-max(n, pad) // multiple) * multiple
    ids = F.pad(inputs[0], (0, length - n), value=pad_id)
    return (ids, *(F.pad(x, (0, length - n)) for x in inputs[1:]))


def takes_global(model: LongseqModel) -> bool:
    """Whether the program has a global_attention_mask input (a causal LM has none: its
    global tokens, if any, are the config's `global_tokens`, attention sinks)."""
    return model.supports_global and model.config.architecture != "causal-lm"


def example_inputs(model: LongseqModel, n: int, batch: int = 2) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(n)
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (batch, n), generator=g)
    mask = torch.ones_like(ids)
    mask[-1, n - n // 3 :] = 0
    inputs: tuple[Tensor, ...] = (ids.masked_fill(mask == 0, cfg.pad_token_id), mask)
    if takes_global(model):
        glob = torch.zeros_like(ids)
        glob[:, 0] = 1
        glob[0, n // 2] = 1
        inputs = (*inputs, glob)
    return inputs


def input_names(model: LongseqModel) -> tuple[str, ...]:
    names = ("input_ids", "attention_mask")
    return (*names, "global_attention_mask") if takes_global(model) else names


def check_exportable(model: LongseqModel) -> None:
    """ValueError naming a layer whose mechanism cannot be traced, and why (the mechanism's
    `not_exportable`)."""
    if model.config.global_tokens:
        raise ValueError(
            f"global_tokens={model.config.global_tokens} (attention sinks under a causal mask) "
            "cannot be exported as a program yet: that path branches on values the trace "
            "cannot see (measured: a data-dependent guard in torch.export)"
        )
    for i, block in enumerate(model.body.layers):
        layer = block.attn.attention
        if layer.not_exportable:
            raise ValueError(
                f"layer {i}: {layer.name!r} attention cannot be exported as a program: "
                f"{layer.not_exportable}"
            )


def trace(model: LongseqModel) -> tuple[Program, Any, tuple[Tensor, ...]]:
    """(the wrapper, its torch.export program, the example inputs it was traced on)."""
    check_exportable(model)
    model = model.eval()
    pad, multiple = program_padding(model)
    top = model.config.max_length
    if pad > top:
        raise ValueError(
            f"max_length={top} is shorter than the {pad} tokens the program pads short inputs to"
        )
    top = top // multiple * multiple  # padded to a multiple, an input must still fit
    wrapper = Program(model, pad, multiple).eval()
    example = fit(example_inputs(model, min(top, pad + multiple + 1)), pad, multiple)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if multiple == 1:
        seq: Any = torch.export.Dim("seq", min=max(pad, 1), max=top)
    else:
        seq = multiple * torch.export.Dim("blocks", min=pad // multiple, max=top // multiple)
    shapes = tuple({0: batch, 1: seq} for _ in example)
    with torch.no_grad():
        program = torch.export.export(wrapper, example, dynamic_shapes=shapes, strict=False)
    return wrapper, program, example


def export_program(model: LongseqModel, folder: str | Path, fmt: str) -> Path:
    """Write `model` as a torch.export program or an ONNX file into `folder` (created), with
    export.json saying the inputs, outputs and the longest input."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    wrapper, program, example = trace(model)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[fmt]
    if fmt == "torch":
        torch.export.save(program, str(path))
    else:
        onnx_program = torch.onnx.export(
            program,
            example,
            dynamo=True,
            input_names=list(input_names(model)),
            output_names=list(wrapper.names),
            opset_version=ONNX_OPSET,
            optimize=True,
        )
        onnx_program.save(str(path))
    meta = {
        "format": fmt,
        "file": FILES[fmt],
        "inputs": list(input_names(model)),
        "outputs": list(wrapper.names),
        "min_length": wrapper.pad,
        "length_multiple": wrapper.multiple,
        "max_length": model.config.max_length // wrapper.multiple * wrapper.multiple,
        "global_slots": ops.TRACE_GLOBAL_SLOTS if takes_global(model) else 0,
        "config": model.config.to_dict(),
    }
    (out / "export.json").write_text(json.dumps(meta, indent=2))
    return path


def check_lengths(model: LongseqModel, pad: int) -> tuple[int, ...]:
    """Three lengths to compare a program with eager at: short, past the minimum, longer."""
    top = model.config.max_length
    return tuple(sorted({min(top, 5), min(top, pad + 37), min(top, 2 * pad + 61)}))


def load_runner(path: Path, fmt: str) -> Any:
    """A function of the program's inputs (tensors) that returns its outputs (tensors)."""
    if fmt == "torch":
        module = torch.export.load(str(path)).module()
        return lambda *xs: tuple(module(*xs))
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "checking an ONNX file needs onnxruntime: pip install 'longseq[export]'"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(*xs: Tensor) -> tuple[Tensor, ...]:
        feed = {name: x.numpy() for name, x in zip(names, xs, strict=True)}
        return tuple(torch.from_numpy(y) for y in session.run(None, feed))

    return run


def compare(model: LongseqModel, runner: Any, n: int, pad: int, multiple: int) -> float:
    """Largest |program - eager| over the real tokens of a right-padded batch of n tokens
    (fitted to the program's lengths; eager runs on the n tokens as they are)."""
    inputs = example_inputs(model, n)
    with torch.no_grad():
        want = Program(model, pad, multiple)(*inputs)
        got = runner(*fit(inputs, pad, multiple, model.config.pad_token_id))
    real = inputs[1].bool()
    worst = 0.0
    for a, b in zip(want, got, strict=True):
        if a.dim() >= 2 and a.shape[1] == n:  # per-token outputs: the real tokens
            diff = (a - b[:, :n].to(a.dtype)).abs()[real]
        else:
            diff = (a - b.to(a.dtype)).abs()
        worst = max(worst, float(diff.max()))
    return worst


def export_checked(model: LongseqModel, folder: str | Path, fmt: str, tol: float = 1e-4) -> dict:
    """`export_program`, then the written file run at three lengths with padding, against
    eager; ValueError past `tol`. Returns export.json's record with the differences."""
    path = export_program(model, folder, fmt)
    record = json.loads((Path(folder) / "export.json").read_text())
    runner = load_runner(path, fmt)
    checked = {}
    pad, multiple = record["min_length"], record["length_multiple"]
    for n in check_lengths(model, pad):
        checked[n] = compare(model, runner, n, pad, multiple)
        if checked[n] > tol:
            raise ValueError(f"the {fmt} program differs from eager by {checked[n]:.2e} at n={n}")
    record["checked"] = checked
    (Path(folder) / "export.json").write_text(json.dumps(record, indent=2))
    return record


__all__ = [
    "FORMATS",
    "Program",
    "compare",
    "export_checked",
    "export_program",
    "load_runner",
    "trace",
]
