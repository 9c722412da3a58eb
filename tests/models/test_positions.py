"""Loss by position (`longseq.models.positions`) and `longseq evaluate`'s buckets on a causal
LM: checked against the model's own logits and an independent per-position computation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from longseq import cli
from longseq.data.tokenizers import load_tokenizer
from longseq.labels import IGNORE
from longseq.models import ModelConfig, build_model
from longseq.models.positions import (
    PositionSums,
    bucket_edges,
    parse_edges,
    span_loss,
    token_losses,
)

LLAMA_TINY = dict(
    architecture="causal-lm",
    vocab_size=260,
    hidden_size=32,
    num_heads=4,
    num_key_value_heads=2,
    num_layers=2,
    intermediate_size=48,
    max_length=64,
    dropout=0.0,
    norm_type="rms",
    feed_forward="gated",
    activation="silu",
    bias=False,
    position="rotary",
)


def _lm(**kw) -> torch.nn.Module:
    return build_model(ModelConfig(**{**LLAMA_TINY, **kw}), seed=0).eval()


def test_token_losses_equal_the_full_logits_cross_entropy():
    model = _lm()
    ids = torch.randint(0, 260, (3, 40), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # right padding
    labels = ids.clone()
    labels[2, 5] = IGNORE
    nll, real = token_losses(model, ids, mask, labels, head_chunk=7)  # chunks not dividing n
    logits = model(ids, attention_mask=mask).logits
    want = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").double()
    keep = mask[:, 1:].bool() & (labels[:, 1:] != IGNORE)
    assert torch.equal(real, keep)
    torch.testing.assert_close(nll[keep], want[keep], rtol=1e-5, atol=1e-5)
    assert float(nll[~keep].abs().sum()) == 0.0
    # the mean is ForCausalLM's own loss on the unpadded row
    with torch.no_grad():
        out = model(ids[:1], labels=ids[:1])
    assert float(nll[0].mean()) == pytest.approx(float(out.loss), rel=1e-5)


def test_token_losses_refuse_other_heads_and_short_inputs():
    enc = build_model(ModelConfig(**{**LLAMA_TINY, "architecture": "masked-lm"}), seed=0)
    with pytest.raises(ValueError, match="needs a causal LM"):
        token_losses(enc, torch.zeros(1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="n >= 2"):
        token_losses(_lm(), torch.zeros(1, 1, dtype=torch.long))


def test_buckets_against_an_independent_computation():
    g = torch.Generator().manual_seed(1)
    nll = torch.rand(4, 99, generator=g, dtype=torch.float64) * 5
    real = torch.rand(4, 99, generator=g) > 0.2
    sums = PositionSums()
    sums.add(nll[:2], real[:2])
    sums.add(nll[2:, :60], real[2:, :60])  # a shorter document: fewer targets late
    sums.add(nll[2:, 60:] * 0, real[2:, 60:] & False)  # nothing counted
    edges = [1, 10, 33, 64, 100]
    rows = sums.buckets(edges)
    # independently: every (document, target position t = column + 1) in a plain loop
    docs = [(nll[i], real[i], 99) for i in range(2)] + [(nll[i], real[i], 60) for i in (2, 3)]
    for row, (a, b) in zip(rows, itertools.pairwise(edges), strict=True):
        values = [
            float(x[t - 1])
            for x, keep, width in docs
            for t in range(a, b)
            if t - 1 < width and keep[t - 1]
        ]
        assert (row["start"], row["end"], row["tokens"]) == (a, b, len(values))
        assert row["loss"] == pytest.approx(sum(values) / len(values), rel=1e-12)
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-12)
    # a span's loss is the token-weighted mean of its buckets
    whole = span_loss(rows, 1, 100)
    every = [float(x[t]) for x, keep, w in docs for t in range(w) if keep[t]]
    assert whole == pytest.approx(sum(every) / len(every), rel=1e-12)
    assert span_loss(rows, 200, 300) is None
    back = PositionSums.from_dict(json.loads(json.dumps(sums.to_dict())))
    assert back.buckets(edges) == rows


def test_edges():
    assert bucket_edges(10, 4) == [1, 4, 8, 10]
    assert bucket_edges(8, 4) == [1, 4, 8]
    assert parse_edges("0, 1024,512") == [0, 512, 1024]
    for bad in ("x", "5", "-1,4"):
        with pytest.raises(ValueError, match="bucket edges"):
            parse_edges(bad)
    with pytest.raises(ValueError, match="bucket size"):
        bucket_edges(10, 0)


def test_evaluate_reports_loss_by_position_past_the_trained_length(tmp_path: Path):
    """`longseq evaluate` on a causal LM saved with max_length 64, read at 128: positions
    extended, every block's NLL bucketed, the chart written beside the JSON."""
    model = _lm()
    folder = tmp_path / "lm"
    model.save_pretrained(folder, tokenizer=load_tokenizer("byte"))
    data = tmp_path / "texts"
    data.mkdir()
    rng = torch.Generator().manual_seed(0)
    for k in range(2):
        letters = torch.randint(97, 123, (300,), generator=rng).tolist()
        (data / f"doc{k}.txt").write_text("".join(map(chr, letters)), encoding="utf-8")
    out = tmp_path / "eval.json"
    argv = ["evaluate", "--model", str(folder), "--data", str(data), "--max-length", "128",
            "--bucket-size", "32", "--batch-size", "2", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    got = json.loads(out.read_text())
    assert got["task"] == "lm" and got["max_length"] == 128
    assert [(r["start"], r["end"]) for r in got["by_position"]] == [
        (1, 32), (32, 64), (64, 96), (96, 128)
    ]  # fmt: skip
    assert (tmp_path / "eval.png").stat().st_size > 1000
    # the same numbers from the model's own logits, block by block (LMDataset's blocks)
    from longseq.convert.longify import longify
    from longseq.data.datasets import LMDataset

    long = longify(model, 128, "full")
    blocks = LMDataset(sorted(str(p) for p in data.glob("*.txt")), "byte", 128)
    ids = torch.stack([blocks[i]["input_ids"] for i in range(len(blocks))]).long()
    full_blocks = [i for i in range(len(blocks)) if len(blocks[i]["input_ids"]) == 128]
    assert full_blocks == list(range(len(blocks)))  # every block full: no padding here
    with torch.no_grad():
        logits = long(ids).logits
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    for row in got["by_position"]:
        want = nll[:, row["start"] - 1 : row["end"] - 1]
        assert row["tokens"] == want.numel()
        assert row["loss"] == pytest.approx(float(want.double().mean()), rel=1e-5)
    total = sum(r["loss"] * r["tokens"] for r in got["by_position"])
    assert got["loss"] == pytest.approx(total / sum(r["tokens"] for r in got["by_position"]))
