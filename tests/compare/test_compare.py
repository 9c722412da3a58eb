"""`longseq compare` end to end on a tiny ListOps run, resume, and the errors for bad options."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from longseq.cli import main
from longseq.compare import presets, runner, tasks
from longseq.compare.presets import PRESETS, Preset, mechanism_options
from longseq.tasks.listops import LRA_LISTOPS, root_rule_accuracy
from longseq.tasks.recall import accuracy_by_distance, recall_spec

TINY = dataclasses.replace(
    PRESETS["default"],
    name="tiny",
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    steps=4,
    batch_size=4,
    warmup_steps=1,
    eval_every=2,
    listops_train=48,
    listops_val=16,
    listops_test=16,
    listops_min_length=10,
    listops_max_length=40,
    options={"linformer": {"k": 8}},
    sweep_lengths=(32, 64),
    sweep_repeats=1,
    sweep_max_seconds=30.0,
    threads=1,  # tiny ops: a second thread only adds synchronisation
)
MECHANISMS = ["full", "linformer"]


def tiny_plan(out: Path, **kw) -> runner.Plan:
    kw.setdefault("resume", True)
    return runner.Plan(out=out, task="listops", preset=TINY, mechanisms=MECHANISMS, **kw)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, runner.Summary]:
    """A tiny comparison whose second mechanism was interrupted at step 2 of 4 beforehand."""
    from longseq.train import train

    out = tmp_path_factory.mktemp("compare")
    plan = tiny_plan(out)
    data = tasks.prepare(plan.task_spec, TINY, TINY.seed, out / "data", log=lambda _: None)
    config = runner.train_config(plan, data, MECHANISMS[1])
    config["run"]["progress"] = False
    train(config, callbacks=[lambda rec: rec.get("kind") == "step" and rec["step"] == 2])
    assert (out / "runs" / MECHANISMS[1] / "last").is_dir()
    summary = runner.run(plan, log=lambda _: None)
    return out, summary


def test_outputs(finished: tuple[Path, runner.Summary]) -> None:
    out, summary = finished
    assert summary.ok
    for name in ("report.md", "curves.png", "sweep.png", "patterns/sheet.png", "plan.json"):
        assert (out / name).is_file(), name
    for m in MECHANISMS:
        assert (out / "patterns" / f"{m}.png").is_file()
    # the report's one table: a row per mechanism with the LRA paper's figure beside ours
    report = (out / "report.md").read_text()
    for m in MECHANISMS:
        row = next(line for line in report.splitlines() if line.startswith(f"| {m} |"))
        assert f"{LRA_LISTOPS[m]:.2f}" in row
    assert summary.table in report
    # the sweep: every mechanism, length and mode measured
    sweep = read_jsonl(out / runner.SWEEP)[1:]
    got = {(r["mechanism"], r["n"], r["mode"]) for r in sweep if r["status"] == "ok"}
    assert got == {
        (m, n, mode) for m in MECHANISMS for n in (32, 64) for mode in ("forward", "fwd+bwd")
    }
    assert all(r["median_ms"] > 0 and r["peak_mb"] >= 0 for r in sweep)


def test_records_match_the_checkpoints(finished: tuple[Path, runner.Summary]) -> None:
    """The recorded test accuracy is that of the saved best model, recomputed here."""
    from longseq.data.collate import make_collate
    from longseq.data.listops import ListOpsDataset
    from longseq.models import from_pretrained

    out, _summary = finished
    lines = read_jsonl(out / runner.RESULTS)
    assert [r["mechanism"] for r in lines] == MECHANISMS
    for r in lines:
        assert r["status"] == "ok" and r["steps"] == TINY.steps
        assert r["val"] == max(e["accuracy"] for e in r["evals"])
        assert [e["step"] for e in r["evals"]] == [2, 4]
        assert r["parameters"] > 0 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        model = from_pretrained(out / "runs" / r["mechanism"] / "best")
        assert model.config.attention == r["mechanism"]
        assert model.config.hidden_size == TINY.hidden_size
        ds = ListOpsDataset(out / "data" / "listops" / "listops_test.tsv")
        batch = make_collate(ds.tokenizer, model.pad_multiple())([ds[i] for i in range(len(ds))])
        labels = batch.pop("labels")
        with torch.no_grad():
            pred = model(**batch).logits.argmax(-1)
        assert r["test"] == pytest.approx((pred == labels).float().mean().item())
    # the interrupted mechanism continued from its checkpoint; the other started afresh
    assert [r["resumed"] for r in lines] == [False, True]


def test_sweep_config_without_a_finished_run(finished: tuple[Path, runner.Summary]) -> None:
    """The sweep's model config when no run finished equals the trained runs' config."""
    out, _summary = finished
    trained = read_jsonl(out / runner.RESULTS)[0]["model_config"]
    plan = tiny_plan(out)
    data = tasks.prepare(plan.task_spec, TINY, TINY.seed, out / "data", log=lambda _: None)
    fallback = runner._base_model_config(plan, data, {})
    skip = {"attention", "attention_options", "layer_attention", "label_names"}  # no weights
    assert {k: v for k, v in fallback.items() if k not in skip} == {
        k: v for k, v in trained.items() if k not in skip
    }


def test_resume_skips_finished(finished: tuple[Path, runner.Summary]) -> None:
    out, summary = finished
    before = (out / runner.RESULTS).read_text()
    logs = {m: (out / "runs" / m / "log.jsonl").read_text() for m in MECHANISMS}
    said: list[str] = []
    again = runner.run(tiny_plan(out), log=said.append)
    assert (out / runner.RESULTS).read_text() == before
    assert {m: (out / "runs" / m / "log.jsonl").read_text() for m in MECHANISMS} == logs
    assert sum("finished earlier, kept" in s for s in said) == len(MECHANISMS) + 1  # + sweep
    assert again.table == summary.table


def test_resume_refuses_other_settings(finished: tuple[Path, runner.Summary]) -> None:
    out, _ = finished
    with pytest.raises(ValueError, match="steps: 4 then, 5 now"):
        changed = dataclasses.replace(TINY, steps=5)
        runner.run(
            runner.Plan(out=out, task="listops", preset=changed, resume=True), log=lambda _: None
        )
    with pytest.raises(ValueError, match="--resume"):
        runner.run(tiny_plan(out, resume=False), log=lambda _: None)


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mechanisms", "full,reformer"], "unknown mechanism(s) reformer; valid: full,"),
        (["--mechanisms", "full,full"], "listed twice"),
        (["--task", "mnist"], "invalid choice: 'mnist'"),
        (["--preset", "huge"], "invalid choice: 'huge'"),
        (["--set", "hidden=3"], "FIELD one of: hidden_size"),
        (["--set", "steps=many"], "expected a int"),
        (["--set", "num_heads=5"], "not divisible by num_heads=5"),
        (["--lengths", "0,64"], "expected positive integers"),
        (["--task", "shakespeare-lm", "--mechanisms", "full,linformer"], "no causal form"),
    ],
)
def test_bad_options(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--out", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing is written before the options are checked


def test_lm_default_leaves_out_non_causal(tmp_path: Path) -> None:
    plan = runner.Plan(out=tmp_path, task="gcide-lm")
    assert plan.mechanisms == ["full", "longformer", "bigbird", "lsh"]
    assert any("linformer" in note for note in plan.notes)


# ----------------------------------------------------------------------------- presets
def test_lra_preset_is_the_papers() -> None:
    p = PRESETS["lra"]
    assert (p.num_layers, p.hidden_size, p.num_heads, p.intermediate_size) == (6, 512, 8, 2048)
    assert (p.steps, p.batch_size, p.listops_max_length) == (5000, 32, 2000)
    assert (p.listops_train, p.listops_val, p.listops_test) == (96_000, 2_000, 2_000)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_mechanisms_build(name: str) -> None:
    """Every mechanism's options at the preset's training length make a model that runs a
    full-length batch (one layer, to keep it quick) and carries those options."""
    import torch

    from longseq.models import ModelConfig, build_model

    p = PRESETS[name]
    for m in presets.default_mechanisms():
        opts = mechanism_options(p, m, p.listops_max_length)
        config = ModelConfig(
            architecture="sequence-classification",
            attention=m,
            attention_options=opts,
            hidden_size=p.hidden_size,
            num_heads=p.num_heads,
            num_layers=1,
            intermediate_size=p.hidden_size,
            max_length=p.listops_max_length,
            num_labels=10,
            **presets.stem_fields(p),  # the options count the stem's positions
        )
        model = build_model(config, seed=0).eval()
        layer = model.body.layers[0].attn.attention
        assert layer.name == m
        assert all(getattr(layer, k) == v for k, v in opts.items() if hasattr(layer, k))
        with torch.no_grad():
            logits = model(torch.randint(4, 20, (1, p.listops_max_length))).logits
        assert logits.shape == (1, 10) and torch.isfinite(logits).all()


def test_preset_overrides() -> None:
    p = PRESETS["default"].with_overrides(["steps=7", "eval_batches=none", "sweep_lengths=8,16"])
    assert (p.steps, p.eval_batches, p.sweep_lengths) == (7, None, (8, 16))
    with pytest.raises(ValueError, match="must be positive"):
        Preset(name="x", summary="", hidden_size=0, num_layers=1, num_heads=1, intermediate_size=1)


def test_preset_reach_and_options_by_name() -> None:
    """A preset names no mechanism's option: each derives its own from `reach`; `options`
    sets one by the mechanism's registered name, over what it derives, and leaves the
    others and the preset itself alone."""
    p = PRESETS["cpu"]
    assert not {"window", "block_size", "linformer_k", "lsh_chunk"} & set(p.to_dict())
    assert mechanism_options(p, "longformer", 2000) == {"window": p.reach}
    assert mechanism_options(p, "bigbird", 2000) == {"block_size": 64, "num_random_blocks": 3}
    q = p.with_overrides(["reach=64", "options.lsh.n_hashes=4", "options.longformer.dilation=2"])
    assert mechanism_options(q, "longformer", 2000) == {"window": 64, "dilation": 2}
    assert mechanism_options(q, "lsh", 2000) == {"chunk_length": 64, "n_hashes": 4}
    assert mechanism_options(q, "bigbird", 2000) == {"block_size": 16, "num_random_blocks": 3}
    assert p.options == {"bigbird": {"num_random_blocks": 3}}  # the original is unchanged
    # Linformer's derived k: the reach, at most 256 and the length; a k given is kept (and
    # refused above the length where the layer is built)
    assert mechanism_options(PRESETS["lra"], "linformer", 2000)["k"] == 256
    assert mechanism_options(q, "linformer", 40)["k"] == 40
    given = q.with_overrides(["options.linformer.k=48"])
    assert mechanism_options(given, "linformer", 40) == {
        "k": 48,
        "sharing": "headwise",
        "max_seq_len": 40,
    }


def test_root_rule_accuracy() -> None:
    """The root-operator rule on hand-made trees: MAX -> 9 and MIN -> 2 learned from train."""
    train = [
        ("( ( ( [MAX 2 ) 9 ) ] )", 9),
        ("( ( ( [MAX 3 ) 9 ) ] )", 9),
        ("( ( ( [MIN 2 ) 9 ) ] )", 2),
    ]
    test = [
        ("( ( ( [MAX 1 ) 2 ) ] )", 2),  # guess 9: miss
        ("( ( ( [MIN 2 ) 7 ) ] )", 2),  # guess 2: hit
        ("( ( ( [MAX ( ( ( [MIN 9 ) 9 ) ] ) ) 0 ) ] )", 9),  # the root is MAX: guess 9, hit
        ("( ( ( [SM 4 ) 5 ) ] )", 9),  # root unseen in train: the overall most frequent, 9: hit
    ]
    assert root_rule_accuracy(train, test) == 75.0


# ----------------------------------------------------------------------------- recall
TINY_RECALL = dataclasses.replace(
    PRESETS["recall"],
    name="tiny-recall",
    hidden_size=16,
    num_heads=2,
    intermediate_size=32,
    steps=3,
    batch_size=4,
    warmup_steps=1,
    eval_every=3,
    seeds=2,
    recall_length=48,
    recall_pairs=3,
    recall_keys=4,
    recall_values=3,
    recall_train=16,
    recall_val=4,
    recall_test=6,
    reach=8,
    sweep_lengths=(48, 96),
    sweep_repeats=1,
    sweep_max_seconds=30.0,
    threads=1,
)


@pytest.fixture(scope="module")
def recall_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, runner.Summary]:
    out = tmp_path_factory.mktemp("recall")
    plan = runner.Plan(out=out, task="recall", preset=TINY_RECALL, mechanisms=["full", "lsh"])
    return out, runner.run(plan, log=lambda _: None)


def test_recall_runs_every_seed_and_scores_by_distance(
    recall_run: tuple[Path, runner.Summary],
) -> None:
    from longseq.data.recall import RecallDataset
    from longseq.models import from_pretrained

    out, summary = recall_run
    assert summary.ok
    lines = read_jsonl(out / runner.RESULTS)
    assert [(r["mechanism"], r["seed"]) for r in lines] == [
        ("full", 0),
        ("full", 1),
        ("lsh", 0),
        ("lsh", 1),
    ]
    test = RecallDataset(out / "data" / "recall" / "recall_test.jsonl")
    for r in lines:
        rows = r["test_by_distance"]
        assert sum(t for _d, _c, t in rows) == TINY_RECALL.recall_test * TINY_RECALL.recall_pairs
        # the recorded test accuracy is the per-distance counts' total, and the best model's
        assert r["test"] == pytest.approx(sum(c for _d, c, _t in rows) / sum(t for *_, t in rows))
        run_dir = out / "runs" / r["mechanism"] / f"seed{r['seed']}"
        assert accuracy_by_distance(from_pretrained(run_dir / "best"), test) == rows
    report = (out / "report.md").read_text()
    assert "## Recall by distance" in report and "### Separation" in report
    for name in ("distance.png", "tradeoff.png", "curves.png", "sweep.png"):
        assert (out / name).is_file(), name
    # the table's rows: the mean over the two seeds and each seed's value in brackets
    row = next(line for line in report.splitlines() if line.startswith("| full | - |"))
    assert row.count("(") >= 2


def test_recall_is_the_default_task(tmp_path: Path) -> None:
    plan = runner.Plan(out=tmp_path)
    assert plan.task == "recall" and plan.preset_spec.name == "recall"
    assert plan.seeds == [0, 1]
    assert plan.run_dir("full", 1) == tmp_path / "runs" / "full" / "seed1"
    spec = recall_spec(plan.preset_spec)
    w, L = plan.preset_spec.reach, plan.preset_spec.num_layers  # reach: Longformer's window
    assert spec.distances == ((1, w // 2), (w // 2 + 1, L * w // 2), (L * w // 2 + 1, 255))
    with pytest.raises(ValueError, match="recall_length"):
        recall_spec(dataclasses.replace(plan.preset_spec, recall_length=33))


# ----------------------------------------------------------------------------- sweep
def _rec(m: str, n: int, ms: float) -> dict:
    return {
        "mechanism": m,
        "n": n,
        "mode": "fwd+bwd",
        "min_ms": ms,
        "median_ms": ms,
        "times_ms": [ms],
        "spread": 0.0,
        "under_load": False,
    }


@pytest.mark.parametrize(("retimed", "flagged"), [(1.5, False), (3.5, True)])
def test_a_time_never_falls_with_length(monkeypatch, retimed: float, flagged: bool) -> None:
    """A time that falls as n grows: the shorter point is re-timed (load only slows a call, so
    it was the one disturbed); if the fastest call still falls, both points are flagged."""
    from longseq.bench import attention as A
    from longseq.compare import sweep

    records = [_rec("m", 64, 3.0), _rec("m", 128, 2.0)]  # 128 faster than 64: an error
    # the re-timing: n = 64 gets `retimed` ms, n = 128 keeps 2.0 ms
    monkeypatch.setattr(sweep, "build", lambda cfg, n, b, d: (n, None))
    monkeypatch.setattr(
        A,
        "time_round_robin",
        lambda layers, x, cfg, bar=None: (
            {"m": {"forward": [1.0], "fwd+bwd": [retimed if layers[0][1] == 64 else 2.0]}},
            {},
        ),
    )
    sweep._never_falling(records, {"m": lambda n: {}}, 1, "cpu", None)
    assert records[0]["times_ms"] == [3.0, retimed]
    assert records[0]["min_ms"] == min(3.0, retimed)
    assert [r["under_load"] for r in records] == [flagged, flagged]
    if flagged:
        assert "fell from n=64 to n=128" in records[0]["note"]
