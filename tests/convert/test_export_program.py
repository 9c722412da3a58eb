"""`longseq export --format torch|onnx`: a traced program equals eager.

Oracle: the eager model on the same right-padded batch (fp32, eval), at three lengths the
program was not traced at, over the real tokens; the ONNX file is run by onnxruntime. Every
trace is `slow` (20 s for a one-layer model, up to 90 s for Longformer to ONNX, on this
loaded 2-core machine): the default run checks the refusals and the length rules only.
"""

from __future__ import annotations

import json

import pytest
import torch

from longseq.cli import main
from longseq.convert import program
from longseq.models import ModelConfig, build_model

TOL = 1e-4
OPTIONS = {
    "full": {},
    "longformer": {"window": 8},
    "linformer": {"k": 16},
    "lsh": {"chunk_length": 8, "num_buckets": 4},
    "local": {"chunk_length": 8},
    "lsh-hf": {"chunk_length": 8, "num_buckets": 4},
    "local-hf": {"chunk_length": 8},
    "bigbird": {"block_size": 4, "num_random_blocks": 1},
    "bigbird-hf": {"block_size": 4, "num_random_blocks": 1},
}


@pytest.fixture(autouse=True)
def _small():
    torch.set_num_threads(1)


def model(attention: str, architecture: str = "encoder", **changes):
    extra = {}
    if attention.startswith("lsh"):  # shared query-key hashing: no learned positions needed
        extra = {"position": "axial", "axial_shape": [64, 8], "axial_dims": [8, 8]}
    config = ModelConfig(
        architecture=architecture,
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=2,
        intermediate_size=24,
        max_length=512,
        attention=attention,
        attention_options=OPTIONS[attention],
        dropout=0.0,
        **{**extra, **changes},
    )
    return build_model(config, seed=0).eval()


def check(m, tmp_path, fmt: str) -> dict:
    record = program.export_checked(m, tmp_path / fmt, fmt, tol=TOL)
    assert len(record["checked"]) == 3 and max(record["checked"].values()) < TOL
    return record


@pytest.mark.slow
def test_full_attention_torch_program(tmp_path) -> None:
    record = check(model("full", "question-answering"), tmp_path, "torch")
    assert record["outputs"] == ["start_logits", "end_logits"]
    assert (record["min_length"], record["length_multiple"]) == (1, 1)


@pytest.mark.slow
def test_full_attention_onnx_runs_in_onnxruntime(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    check(model("full", "sequence-classification"), tmp_path, "onnx")


@pytest.mark.slow
def test_the_comparison_can_fail(tmp_path) -> None:
    """A program of one model checked against another fails the comparison."""
    m = model("full")
    path = program.export_program(m, tmp_path / "p", "torch")
    runner = program.load_runner(path, "torch")
    other = model("full")
    with torch.no_grad():
        other.body.embeddings.word.weight.add_(torch.randn_like(other.body.embeddings.word.weight))
    assert program.compare(other, runner, 9, 1, 1) > 1e-2


@pytest.mark.parametrize(
    ("attention", "reason"),
    [("bigbird", "layout"), ("bigbird-hf", "layout"), ("lsh", "out="), ("lsh-hf", "out=")],
)
def test_what_cannot_be_traced_is_refused_with_the_reason(attention, reason, tmp_path) -> None:
    m = model(attention)
    with pytest.raises(ValueError, match=reason):
        program.export_program(m, tmp_path / "p", "torch")
    if attention == "bigbird":  # the command says it too, and writes nothing
        m.save_pretrained(tmp_path / "m")
        args = ["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "onnx"]
        assert main(args) == 2
        assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_writes_program_and_record(tmp_path, capsys) -> None:
    model("full").save_pretrained(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "torch"]) == 0
    record = json.loads((tmp_path / "out" / "export.json").read_text())
    assert record["inputs"] == ["input_ids", "attention_mask"]
    assert (tmp_path / "out" / "model.pt2").is_file()
    assert "max |program - eager|" in capsys.readouterr().out
    # an earlier export is replaced only with --force
    assert main(["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "torch"]) == 2
    args = ["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "torch", "--force"]
    assert main(args) == 0


def test_attention_sinks_are_refused_with_the_reason(tmp_path) -> None:
    m = model("longformer", "causal-lm", global_tokens=2, position="rotary")
    with pytest.raises(ValueError, match="sinks"):
        program.export_program(m, tmp_path / "p", "torch")


def test_lengths_a_program_takes() -> None:
    """Blocked mechanisms: a multiple of the block, at least a block and its halo (Longformer:
    query block 64 at window 8, two blocks; local: before + after + 2 chunks); full: any."""
    assert program.program_padding(model("full")) == (1, 1)
    assert program.program_padding(model("longformer")) == (128, 64)
    assert program.program_padding(model("local")) == (24, 8)
    ids = torch.ones(2, 70, dtype=torch.long)
    fitted = program.fit((ids, ids), 128, 64, pad_id=0)
    assert fitted[0].shape == (2, 128) and int(fitted[1][:, 70:].sum()) == 0
    assert program.fit((ids, ids), 24, 8)[0].shape == (2, 72)


EXPORTABLE = ["full", "longformer", "linformer", "local", "local-hf"]


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["torch", "onnx"])
@pytest.mark.parametrize("attention", EXPORTABLE)
def test_every_mechanism_exports(attention: str, fmt: str, tmp_path) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    record = check(model(attention), tmp_path, fmt)
    if attention == "longformer":
        assert record["inputs"][-1] == "global_attention_mask"
