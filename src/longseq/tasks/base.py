"""The task entry's interface (`Task`), the data sets `longseq compare` trains a task on
(`CompareTask`), and the split files it builds for them (`Splits`).

A task answers four groups of questions, each a method with a default a new task may keep:

- data: `tokenizer`, `dataset` (one split; the only method without a default),
  `label_names`;
- scoring: `metrics` (what evaluation reports; the model's head computes them), `best_metric`
  (run.metric auto), `by_distance` (per-bucket scores of the test split beyond the metrics),
  `scores_by_position` (`longseq evaluate --buckets`: where the target lies);
- predict: `predict_input` (a JSON line as the model's Predictor takes it), `predictor`
  (what `longseq predict` runs; a task that writes text, summarisation, brings its own);
- compare: `compare` (its named data sets), `prepare` (build or find their splits),
  `chart_lines`, `describe_data` and `report_section` (its part of report.md).

A zero-shot task (a pre-trained model, no training) needs only `dataset` for its val/test
files and `longseq evaluate`; one with `zero_shot = True` is run by `longseq compare` without
training (`longseq.compare.zero_shot`: each mechanism substituted into the model). A task
with per-bucket metrics returns them from `by_distance`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from longseq.data import real
from longseq.data.tokenizers import CONFIG_NAME, load_tokenizer

Log = Callable[[str], None]


@dataclass(frozen=True)
class CompareTask:
    """One data set `longseq compare --task NAME` trains every mechanism on."""

    name: str
    task: str  # the registered task (the trainer's data.task)
    dataset: str | None  # the `longseq data` builder (None: generated from the seed)
    metric: str  # what the report shows: accuracy | f1 | bpb
    description: str
    preset: str = "default"  # the preset used when --preset is not given
    reference: tuple[tuple[str, float], ...] = ()  # (mechanism, published test %) pairs
    reference_label: str = ""  # the column head of `reference`

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "bpb"


@dataclass(frozen=True)
class SplitSource:
    """What one split's dataset is built from (`Task.dataset`)."""

    cfg: Any  # the data section (longseq.train.DataConfig): max_length, fields, ...
    tokenizer: Any
    path: str | list[str]  # the split's file (or files, where the task takes several)
    split: str = "test"
    seed: int = 0
    label_names: list[str] | None = None  # the train set's, so every split agrees

    def files(self, task: Task) -> str | list[str]:
        return task.files(self.path, self.split)


@dataclass
class Splits:
    """The split files the trainer reads and what the report says about them."""

    train: str
    val: str
    test: str
    max_length: int  # tokens per example (ListOps: the longest plus [cls]) or per LM block
    info: dict[str, Any]


class Task:
    """A task: subclass, set `name` and `architecture`, write `dataset`, then `register`."""

    name: ClassVar[str]
    architecture: ClassVar[str]  # the model head it trains (models.ARCHITECTURES)
    metrics: ClassVar[tuple[str, ...]] = ("loss",)  # what evaluation reports (run.metric)
    best_metric: ClassVar[str] = "loss"  # run.metric auto: picks the best checkpoint
    causal: ClassVar[bool] = False  # its model is causal: compare keeps causal mechanisms
    several_files: ClassVar[bool] = False  # a split may be several files (LM text)
    # a pre-trained model evaluated as it is: compare trains nothing and runs
    # `longseq.compare.zero_shot` instead (each mechanism substituted by `longify`)
    zero_shot: ClassVar[bool] = False
    compare: ClassVar[tuple[CompareTask, ...]] = ()
    # "module:function" of its report.md section (compare calls it; None: no section)
    report_section: ClassVar[str | None] = None
    split_suffix: ClassVar[str] = "jsonl"  # compare's real-data split files: train.SUFFIX ...

    # ------------------------------------------------------------------------ data
    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        """data.tokenizer, else the one saved with the model in `init_from`, else bytes."""
        if cfg.tokenizer is not None:
            return load_tokenizer(cfg.tokenizer)
        if init_from is not None and (Path(init_from) / CONFIG_NAME).is_file():
            return load_tokenizer(init_from)
        return load_tokenizer("byte")

    def own_vocabulary(self, cfg: Any, allowed: tuple[str | None, ...] = (None,)) -> None:
        """Refuse data.tokenizer for a task whose tokenizer is fixed by its data."""
        if cfg.tokenizer not in allowed:
            raise ValueError(f"task {self.name} has its own vocabulary: leave data.tokenizer unset")

    def dataset(self, source: SplitSource) -> Any:
        """The dataset of one split (items: dicts of tensors the Collator pads)."""
        raise NotImplementedError(f"task {self.name} builds no dataset")

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str] | None:
        """The class names the task fixes or the config gives (None: no classes, or the train
        set's, which a dataset reports as its `label_names`)."""
        return None

    def files(self, path: str | list[str], split: str) -> str | list[str]:
        """The split's file(s): one path, or a list where `several_files`."""
        paths = [path] if isinstance(path, str) else list(path)
        if self.several_files:
            return paths
        if len(paths) != 1:
            raise ValueError(f"data.{split} must name one file for task {self.name}, got {paths}")
        return paths[0]

    # ------------------------------------------------------------------------ scoring
    def by_distance(self, model: Any, cfg: Any, tokenizer: Any) -> list[list[float]] | None:
        """Per-bucket scores of `model` on the test split cfg.test, rows the report section
        reads (recall: [distance, correct, total]); None: the metrics are all there is."""
        return None

    def scores_by_position(
        self, model: Any, source: SplitSource, edges: list[int], batch_size: int = 16
    ) -> list[dict[str, Any]] | None:
        """Scores by where the target lies in the input, one row per bucket [edges[i],
        edges[i+1]) of token positions, every example of the file counted, those out of the
        model's reach as misses (`longseq evaluate --buckets`); None: no such split."""
        return None

    # ------------------------------------------------------------------------ predict
    def predict_input(self, doc: dict[str, Any]) -> dict[str, Any]:
        """One input document (a JSON line) as the Predictor takes it."""
        return doc

    def predictor(self, model: Any, tokenizer: Any, **options: Any) -> Any:
        """What `longseq predict` runs: an object whose `predict(docs)` yields one record per
        document. Default: `longseq.models.predict.Predictor` reading `predict_input`."""
        from longseq.models.predict import Predictor

        if options.pop("max_new_tokens", None) is not None:
            raise ValueError(f"--max-new-tokens is for a task that writes text, not {self.name}")
        return Predictor(model, tokenizer, read=self.predict_input, **options)

    # ------------------------------------------------------------------------ compare
    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        """Build (or, `given`, find) the splits of `ct` in `folder`. Default: the real-data
        files of `longseq data ct.dataset` (train/val/test.SUFFIX and stats.json)."""
        ext = self.split_suffix
        paths = {s: folder / f"{s}.{ext}" for s in ("train", "val", "test")}
        if not all(p.is_file() for p in paths.values()) or not (folder / "stats.json").is_file():
            if given:
                raise FileNotFoundError(
                    f"--data {folder}: expected train.{ext}, val.{ext}, test.{ext} and "
                    f"stats.json there (written by `longseq data {ct.dataset} --out DIR`)"
                )
            log(f"data: building {ct.dataset} into {folder}")
            try:
                self.build(ct, preset, folder)
            except real.SourceNotFoundError as e:
                raise FileNotFoundError(
                    f"{e}\n(or build the data elsewhere with `longseq data {ct.dataset} --out "
                    "DIR` and pass --data DIR to longseq compare)"
                ) from None
        info = {"source": str(folder), **self.split_info(folder, paths)}
        return Splits(*(str(paths[s]) for s in ("train", "val", "test")), preset.text_length, info)

    def build(self, ct: CompareTask, preset: Any, folder: Path) -> None:
        """Write the real-data splits of `ct` into `folder` (compare, when not given)."""
        real.BUILDERS[str(ct.dataset)](folder)

    def split_info(self, folder: Path, paths: dict[str, Path]) -> dict[str, Any]:
        """What the report says about the split files (default: their sizes in bytes)."""
        return {"bytes": {s: p.stat().st_size for s, p in paths.items()}}

    def chart_lines(self, info: dict[str, Any]) -> dict[str, float | None]:
        """Horizontal lines on the validation chart (label -> value in the metric's unit)."""
        return {}

    def describe_data(self, info: dict[str, Any]) -> str:
        """The report's words on the data, after the compare task's description."""
        return examples_text(info)


def examples_text(info: dict[str, Any]) -> str:
    ex = info.get("examples")
    return f", {ex['train']:,} / {ex['val']:,} / {ex['test']:,} examples" if ex else ""


def class_info(counts: dict[str, Counter], num_classes: int, names: list[Any]) -> dict[str, Any]:
    """Sizes, and the two floors an accuracy must beat: chance and the majority class."""
    test = counts["test"]
    total = sum(test.values())
    return {
        "examples": {s: sum(c.values()) for s, c in counts.items()},
        "num_classes": num_classes,
        "labels": [str(n) for n in names],
        "chance": 100.0 / num_classes,
        "majority_test": 100.0 * max(test.values()) / total if total else None,
    }


def classes_text(info: dict[str, Any]) -> str:
    return (
        f"; {info['num_classes']} classes: chance {info['chance']:.1f}%, majority class "
        f"{info['majority_test']:.1f}% of test"
    )


def params_match(marker: Path, want: dict[str, Any], paths: dict[str, Path]) -> bool:
    """Whether `folder` already holds splits generated with `want` (its marker file)."""
    return (
        marker.is_file()
        and json.loads(marker.read_text()) == want
        and all(p.is_file() for p in paths.values())
    )


def progress_bar(total: int, desc: str) -> Any:
    return tqdm(total=total, desc=desc, unit=" ex", file=sys.stderr, disable=None)


__all__ = [
    "CompareTask",
    "SplitSource",
    "Splits",
    "Task",
    "class_info",
    "examples_text",
    "progress_bar",
]
