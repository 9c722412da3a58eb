"""A task added in one class plus a `register` call flows through everything: the trainer
(its tokenizer, datasets, labels and metric), `longseq evaluate`, `longseq predict` (what it
reads) and `longseq compare` (its data, per-bucket scores, chart lines and report section).
No code outside its class names it."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from longseq import tasks
from longseq.cli import main
from longseq.tasks import CompareTask, Splits, Task

NAME = "test-first-digit"


def digits(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 20)))


class FirstDigitDataset:
    """`[cls] digits [sep]`, labelled with the first digit mod 3."""

    def __init__(self, path: str, tokenizer: Any) -> None:
        lines = Path(path).read_text().splitlines()
        self.texts = [json.loads(line)["digits"] for line in lines]
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        tok, text = self.tokenizer, self.texts[i]
        ids = [tok.cls_id, *tok.encode(text), tok.sep_id]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(int(text[0]) % 3)}


class FirstDigit(Task):
    """Test-only: the class of a digit string is its first digit mod 3 (bytes, 3 classes)."""

    name = NAME
    architecture = "sequence-classification"
    metrics = ("loss", "accuracy")
    best_metric = "accuracy"
    compare = (CompareTask(NAME, NAME, None, "accuracy", "first digit mod 3", preset="recall"),)
    report_section = f"{__name__}:section"

    def dataset(self, source):
        return FirstDigitDataset(source.files(self), source.tokenizer)

    def label_names(self, cfg, tokenizer):
        return ["zero", "one", "two"]

    def by_distance(self, model, cfg, tokenizer):
        """[first digit, correct, total]: the per-bucket rows of its report section."""
        ds = self.dataset(tasks.SplitSource(cfg, tokenizer, cfg.test))
        rows = {d: [0, 0] for d in range(10)}
        with torch.no_grad():
            for i in range(len(ds)):
                item = ds[i]
                guess = model(item["input_ids"][None]).logits.argmax(-1).item()
                row = rows[int(ds.texts[i][0])]
                row[0] += int(guess == item["labels"].item())
                row[1] += 1
        return [[d, c, t] for d, (c, t) in rows.items() if t]

    def predict_input(self, doc):
        return {**doc, "text": doc["digits"]}

    def prepare(self, ct, preset, seed, folder, given, log):
        write_splits(folder, seed)
        info = {"examples": {"train": 64, "val": 16, "test": 16}, "num_classes": 3}
        return Splits(*(str(folder / f"{s}.jsonl") for s in ("train", "val", "test")), 24, info)

    def chart_lines(self, info):
        return {"chance": 100 / 3}


def section(out, plan, info, results, sweep) -> list[str]:
    rows = [r for r in results if r.get("test_by_distance")]
    return [
        "## By first digit",
        "",
        *(f"- {r['mechanism']}: {r['test_by_distance']}" for r in rows),
    ]


def write_splits(folder: Path, seed: int) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 64), ("val", 16), ("test", 16)):
        lines = [json.dumps({"digits": digits(rng)}) for _ in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def registered():
    tasks.register(FirstDigit)
    yield NAME
    tasks.unregister(NAME)


MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def test_train_evaluate_and_predict(registered, tmp_path: Path, capsys):
    from longseq.train import train

    write_splits(tmp_path / "data", seed=0)
    data = {s: str(tmp_path / "data" / f"{s}.jsonl") for s in ("train", "val", "test")}
    result = train(
        {
            "model": MODEL,
            "data": {"task": registered, **data, "max_length": 24, "batch_size": 8},
            "optim": {"lr": 3e-3, "max_steps": 4},
            "run": {"out": str(tmp_path / "run"), "eval_every": 2, "progress": False},
        }
    )
    # the task's head, labels and metric
    assert result.model.config.architecture == "sequence-classification"
    assert result.model.config.label_names == ["zero", "one", "two"]
    assert result.metric == "accuracy" and "accuracy" in result.test
    assert result.best_dir == tmp_path / "run" / "best"
    # evaluate: the run's config names the task; the same test metrics
    assert main(["evaluate", "--model", str(result.best_dir), "--data", data["test"],
                 "--no-progress"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    assert scored["task"] == registered and scored["examples"] == 16
    assert scored["accuracy"] == pytest.approx(result.test["accuracy"])
    # predict reads the task's own documents ({"digits": ...}) through predict_input
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"digits": "3141"}\n{"digits": "2718"}\n')
    assert main(["predict", "--model", str(result.best_dir), str(docs), "--no-progress"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["source"] for r in out] == [f"{docs}:1", f"{docs}:2"]
    assert all(r["label"] in ("zero", "one", "two") for r in out)


def test_compare(registered, tmp_path: Path):
    from longseq.compare import presets, runner

    tiny = dataclasses.replace(
        presets.get("recall"), name="tiny", hidden_size=16, num_heads=2, intermediate_size=32,
        num_layers=1, steps=2, batch_size=8, warmup_steps=1, eval_every=2, seeds=1, reach=8,
        sweep_lengths=(24,), sweep_repeats=1,
        sweep_max_seconds=30.0, threads=1,
    )  # fmt: skip
    assert registered in tasks.compare_tasks()
    plan = runner.Plan(out=tmp_path / "cmp", task=registered, preset=tiny, mechanisms=["full"])
    summary = runner.run(plan, log=lambda _: None)
    assert summary.ok, summary.results
    (record,) = summary.results
    assert sum(t for _d, _c, t in record["test_by_distance"]) == 16
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "first digit mod 3" in report and "## By first digit" in report
    assert "- full: [[" in report
