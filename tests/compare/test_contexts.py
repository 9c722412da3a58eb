"""`longseq compare --contexts`: one plan per context at the same tokens per step, the context
report against hand-made results, and the refusal of a task with no context axis."""

from __future__ import annotations

from pathlib import Path

import pytest

from longseq.compare import contexts, runner
from longseq.compare import tasks as T
from longseq.compare.presets import PRESETS
from longseq.tasks.base import Splits


def base(tmp_path: Path, **kw) -> runner.Plan:
    preset = PRESETS["default"].with_overrides(["text_length=512", "batch_size=16", "seeds=2"])
    return runner.Plan(
        out=tmp_path, task="genome-bases", preset=preset, mechanisms=["full", "longformer"], **kw
    )


def test_one_plan_per_context_keeps_the_tokens_per_step(tmp_path):
    parts = contexts.plans(base(tmp_path), [8192, 512, 2048])
    assert [p.preset_spec.text_length for p in parts] == [512, 2048, 8192]
    assert [p.preset_spec.batch_size for p in parts] == [16, 4, 1]
    assert [Path(p.out).name for p in parts] == ["context-512", "context-2048", "context-8192"]
    assert [p.sweep for p in parts] == [False, False, True]  # the sweep once, longest context
    assert {p.preset_spec.steps for p in parts} == {PRESETS["default"].steps}
    # a context longer than batch x length tokens still trains on one sequence
    assert contexts.batch_at(parts[0].preset_spec, 100_000) == 1
    for bad in ([], [512, 512], [0, 512]):
        with pytest.raises(ValueError, match="--contexts"):
            contexts.plans(base(tmp_path), bad)


def test_a_task_whose_length_ignores_text_length_is_refused(tmp_path, monkeypatch):
    fixed = Splits("a", "b", "c", 2002, {})
    monkeypatch.setattr(T, "prepare", lambda *a, **k: fixed)
    with pytest.raises(ValueError, match="no context axis"):
        contexts.check_task(contexts.plans(base(tmp_path), [512])[0], log=lambda _: None)
    follows = Splits("a", "b", "c", 512, {})
    monkeypatch.setattr(T, "prepare", lambda *a, **k: follows)
    contexts.check_task(contexts.plans(base(tmp_path), [512])[0], log=lambda _: None)


def record(m: str, seed: int, test: float, f1: list[float]) -> dict:
    metrics = {"macro_f1": test, **{f"f1_{k}": v for k, v in enumerate(f1)}}
    config = {"label_names": ["intergenic", "intron", "exon"]}
    return {
        "mechanism": m,
        "seed": seed,
        "status": "ok",
        "test": test,
        "test_metrics": metrics,
        "model_config": config,
    }


def test_the_report_says_where_a_longer_context_pays(tmp_path):
    plan = base(tmp_path)
    parts = contexts.plans(plan, [512, 8192])
    results = [
        [
            record("full", 0, 0.40, [0.1, 0.5, 0.6]),
            record("full", 1, 0.42, [0.1, 0.5, 0.6]),
            record("longformer", 0, 0.40, [0.2, 0.4, 0.6]),
            record("longformer", 1, 0.44, [0.2, 0.4, 0.6]),
        ],
        [
            record("full", 0, 0.60, [0.3, 0.7, 0.8]),
            record("full", 1, 0.62, [0.3, 0.7, 0.8]),
            record("longformer", 0, 0.43, [0.2, 0.4, 0.6]),
            {"mechanism": "longformer", "seed": 1, "status": "failed", "error": "x"},
        ],
    ]
    rows = contexts.collect(parts, results)
    at = {(r["mechanism"], r["context"]): r for r in rows}
    assert at["full", 512]["mean"] == pytest.approx(0.41)
    assert at["full", 512]["sd"] == pytest.approx(0.0141421, rel=1e-4)
    assert at["longformer", 8192]["values"] == [0.43] and at["longformer", 8192]["sd"] is None
    assert at["longformer", 8192]["failed"] == 1
    assert at["full", 8192]["test_metrics"]["f1_0"] == pytest.approx(0.3)
    task = plan.task_spec
    assert contexts.verdict(at["full", 512], at["full", 8192], task).startswith("helps: +20.0")
    assert contexts.verdict(at["longformer", 512], at["longformer", 8192], task).startswith(
        "within the noise"
    )
    table = contexts.write_report(tmp_path, plan, rows)
    assert "| full | 41.0 ± 1.4 | 61.0 ± 1.4 | helps: +20.0 points" in table
    text = (tmp_path / contexts.CONTEXTS_MD).read_text()
    assert "| full | 8,192 | 30.0 | 70.0 | 80.0 |" in text  # per-class F1
    assert "| mechanism | context | intergenic | intron | exon |" in text  # f1_k by name
    contexts.chart(tmp_path / "c.png", task, rows)
    assert (tmp_path / "c.png").stat().st_size > 1000
