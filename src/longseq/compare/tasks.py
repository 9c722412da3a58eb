"""The tasks of `longseq compare` and their data: built once per output folder, then shared.

    recall             associative recall by distance (values as classes), accuracy per
                       distance range, the prediction from the patterns beside it
    listops            ListOps as the Long Range Arena generates it (10 classes), accuracy
    shakespeare-genre  Shakespeare scenes by genre (4 classes), bytes, accuracy
    kernel-docs        Linux kernel documents by subsystem, bytes, accuracy
    gcide-qa           GCIDE entries as long documents, a question naming one headword,
                       its definition the answer span: exact match and F1 by distance
    shakespeare-lm     the plays' text, byte-level causal LM, bits per byte
    gcide-lm           the GCIDE dictionary, byte-level causal LM, bits per byte

ListOps and recall are generated from the seed (no download). The real-data tasks are built from
installed packages by `longseq.data.real` (the same files `longseq data NAME` writes), or
read from a folder given with --data.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longseq.compare.presets import Preset


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # the trainer's data.task: listops | classification | lm
    dataset: str | None  # the `longseq data` builder (None: ListOps, generated)
    metric: str  # accuracy | bpb
    description: str
    preset: str = "default"  # the preset used when --preset is not given

    @property
    def architecture(self) -> str:
        from longseq.train.data import ARCHITECTURE

        return ARCHITECTURE[self.kind]

    @property
    def lower_is_better(self) -> bool:
        return self.metric == "bpb"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "recall",
            "recall",
            None,
            "accuracy",
            "associative recall by distance",
            preset="recall",
        ),
        Task("listops", "listops", None, "accuracy", "ListOps (Long Range Arena generator)"),
        Task(
            "shakespeare-genre",
            "classification",
            "shakespeare",
            "accuracy",
            "Shakespeare scenes by genre, bytes",
        ),
        Task(
            "kernel-docs",
            "classification",
            "kernel-docs",
            "accuracy",
            "Linux kernel documents by subsystem, bytes",
        ),
        Task(
            "gcide-qa",
            "qa",
            "gcide-qa",
            "f1",
            "GCIDE long-document QA (documents of dictionary entries)",
        ),
        Task("shakespeare-lm", "lm", "shakespeare", "bpb", "Shakespeare's plays, byte-level LM"),
        Task("gcide-lm", "lm", "gcide", "bpb", "GCIDE dictionary, byte-level LM"),
    )
}


def get(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


@dataclass
class TaskData:
    """The split files the trainer reads and what the report says about them."""

    train: str
    val: str
    test: str
    max_length: int  # tokens per example (ListOps: the longest plus [cls]) or per LM block
    info: dict[str, Any]


def listops_params(preset: Preset, seed: int) -> dict[str, int]:
    return {
        "train": preset.listops_train,
        "val": preset.listops_val,
        "test": preset.listops_test,
        "seed": seed,
        "min_length": preset.listops_min_length,
        "max_length": preset.listops_max_length,
    }


def prepare(
    task: Task,
    preset: Preset,
    seed: int,
    root: Path,
    given: Path | None = None,
    log: Callable[[str], None] = print,
) -> TaskData:
    """Build (or find) the task's splits under `root` (or in `given`); return the files."""
    if task.kind == "listops":
        return _listops(preset, seed, Path(given) if given else root / "listops", given, log)
    if task.kind == "recall":
        return _recall(preset, seed, Path(given) if given else root / "recall", given, log)
    return _real(task, preset, Path(given) if given else root / str(task.dataset), given, log)


def _listops(
    preset: Preset, seed: int, folder: Path, given: Path | None, log: Callable[[str], None]
) -> TaskData:
    from longseq.data import listops

    params = listops_params(preset, seed)
    paths = {s: listops.split_path(folder, s) for s in listops.SPLITS}
    marker = folder / "params.json"
    done = (
        marker.is_file()
        and json.loads(marker.read_text()) == params
        and all(p.is_file() for p in paths.values())
    )
    if given is not None and not all(p.is_file() for p in paths.values()):
        raise FileNotFoundError(
            f"--data {folder}: expected listops_train.tsv, listops_val.tsv and "
            "listops_test.tsv there (written by `longseq data listops --out DIR`)"
        )
    if given is None and not done:
        total = params["train"] + params["val"] + params["test"]
        log(
            f"data: generating {total:,} ListOps examples ({params['min_length']} < length < "
            f"{params['max_length']}, seed {seed}) into {folder}"
        )
        start = time.perf_counter()
        bar = _bar(total, "listops")
        listops.write_splits(
            folder,
            params["train"],
            params["val"],
            params["test"],
            seed,
            min_length=params["min_length"],
            max_length=params["max_length"],
            progress=lambda kept, drawn: bar.update(kept - bar.n),
        )
        bar.close()
        marker.write_text(json.dumps(params) + "\n")
        log(f"data: done in {time.perf_counter() - start:.1f} s")
    counts = {s: Counter(label for _, label in listops.read_split(p)) for s, p in paths.items()}
    if given is not None:  # lengths from the files: the longest source plus [cls]
        tok = listops.ListOpsTokenizer()
        longest = max(
            len(tok.encode(src)) for p in paths.values() for src, _ in listops.read_split(p)
        )
        max_length = longest + 1
    else:
        max_length = params["max_length"]  # lengths < max_length, so tokens + [cls] <= it
    info = _class_info(counts, listops.NUM_CLASSES, [str(d) for d in range(10)])
    info["root_rule_test"] = root_rule_accuracy(
        listops.read_split(paths["train"]), listops.read_split(paths["test"])
    )
    info |= {"source": str(folder), "generator": params if given is None else None}
    return TaskData(
        train=str(paths["train"]),
        val=str(paths["val"]),
        test=str(paths["test"]),
        max_length=max_length,
        info=info,
    )


def _recall(
    preset: Preset, seed: int, folder: Path, given: Path | None, log: Callable[[str], None]
) -> TaskData:
    from longseq.compare.presets import recall_spec
    from longseq.data import recall

    paths = {s: recall.split_path(folder, s) for s in recall.SPLITS}
    if given is not None:
        if not all(p.is_file() for p in paths.values()):
            raise FileNotFoundError(
                f"--data {folder}: expected recall_train.jsonl, recall_val.jsonl, "
                "recall_test.jsonl and spec.json there (written by `longseq data recall`)"
            )
        spec = recall.read_spec(folder)
    else:
        spec = recall_spec(preset)
        sizes = {"train": preset.recall_train, "val": preset.recall_val, "test": preset.recall_test}
        want = {"spec": spec.to_dict(), "sizes": sizes, "seed": seed}
        marker = folder / recall.SPEC_JSON
        done = (
            marker.is_file()
            and json.loads(marker.read_text()) == want
            and all(p.is_file() for p in paths.values())
        )
        if not done:
            total = sum(sizes.values())
            log(
                f"data: generating {total:,} recall examples ({spec.length} tokens, "
                f"{spec.pairs} pairs, seed {seed}) into {folder}"
            )
            bar = _bar(total, "recall")
            recall.write_splits(folder, spec, sizes, seed, progress=lambda k: bar.update(k - bar.n))
            bar.close()
    counts = {s: sum(1 for _ in p.open(encoding="utf-8")) for s, p in paths.items()}
    info: dict[str, Any] = {
        "source": str(folder),
        "examples": counts,
        "num_classes": spec.values,
        "labels": [str(v) for v in range(spec.values)],
        "chance": 100.0 / spec.values,
        "majority_test": None,
        "recall_spec": spec.to_dict(),
    }
    return TaskData(
        train=str(paths["train"]),
        val=str(paths["val"]),
        test=str(paths["test"]),
        max_length=spec.length,
        info=info,
    )


def root_rule_accuracy(train: list[tuple[str, int]], test: list[tuple[str, int]]) -> float:
    """Test accuracy (%) of a rule that reads only the root operator: the most frequent train
    label for each root (MAX -> 9, MIN -> 0, ...). What a model reaches once it finds the root;
    about 36% at LRA's lengths, which is where the LRA paper's models stand."""

    def root(source: str) -> str:
        return next(t for t in source.split() if t != "(")

    by_root: dict[str, Counter] = {}
    for source, label in train:
        by_root.setdefault(root(source), Counter())[label] += 1
    overall = Counter(label for _, label in train).most_common(1)[0][0]
    guess = {r: c.most_common(1)[0][0] for r, c in by_root.items()}
    hits = sum(guess.get(root(source), overall) == label for source, label in test)
    return 100.0 * hits / len(test) if test else float("nan")


def _real(
    task: Task, preset: Preset, folder: Path, given: Path | None, log: Callable[[str], None]
) -> TaskData:
    ext = "txt" if task.kind == "lm" else "jsonl"
    # (qa: train/val/test.jsonl, tokenizer.json and stats.json from longseq.data.gcide_qa)
    paths = {s: folder / f"{s}.{ext}" for s in ("train", "val", "test")}
    if not all(p.is_file() for p in paths.values()) or not (folder / "stats.json").is_file():
        if given is not None:
            raise FileNotFoundError(
                f"--data {folder}: expected train.{ext}, val.{ext}, test.{ext} and stats.json "
                f"there (written by `longseq data {task.dataset} --out DIR`)"
            )
        from longseq.data import real

        log(f"data: building {task.dataset} into {folder}")
        try:
            if task.kind == "qa":  # documents of about 3 characters per token of text_length
                from longseq.data import gcide_qa

                gcide_qa.build(folder, length=3 * preset.text_length, progress=False)
            else:
                real.BUILDERS[str(task.dataset)](folder)
        except real.SourceNotFoundError as e:
            raise FileNotFoundError(
                f"{e}\n(or build the data elsewhere with `longseq data {task.dataset} --out DIR` "
                "and pass --data DIR to longseq compare)"
            ) from None
    info: dict[str, Any] = {"source": str(folder)}
    if task.kind == "classification":
        from longseq.data.datasets import load_label_names

        names = load_label_names(folder / "labels.json")
        counts = {}
        for split, path in paths.items():
            with path.open(encoding="utf-8") as f:
                counts[split] = Counter(json.loads(line)["label"] for line in f if line.strip())
        info |= _class_info(counts, len(names), names)
    else:
        info["bytes"] = {s: p.stat().st_size for s, p in paths.items()}
    return TaskData(
        train=str(paths["train"]),
        val=str(paths["val"]),
        test=str(paths["test"]),
        max_length=preset.text_length,
        info=info,
    )


def _class_info(counts: dict[str, Counter], num_classes: int, names: list[Any]) -> dict[str, Any]:
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


def _bar(total: int, desc: str) -> Any:
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=" ex", file=sys.stderr, disable=None)


__all__ = ["TASKS", "Task", "TaskData", "get", "prepare"]
