"""ListOps as the Long Range Arena generates it: a nested expression, its value (10 classes)."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from longseq.data import listops
from longseq.tasks.base import (
    CompareTask,
    Log,
    Splits,
    SplitSource,
    Task,
    class_info,
    classes_text,
    examples_text,
    params_match,
    progress_bar,
)

# The Long Range Arena paper's ListOps test accuracy (Tay et al., 2021, Table 1); LSH = Reformer.
LRA_LISTOPS: dict[str, float] = {
    "full": 36.37,
    "longformer": 35.63,
    "bigbird": 36.05,
    "linformer": 35.70,
    "lsh": 37.27,
}


class ListOps(Task):
    name = "listops"
    architecture = "sequence-classification"
    metrics = ("loss", "accuracy", "macro_f1")
    best_metric = "accuracy"
    compare = (
        CompareTask(
            "listops",
            "listops",
            None,
            "accuracy",
            "ListOps (Long Range Arena generator)",
            reference=tuple(LRA_LISTOPS.items()),
            reference_label="LRA paper test %",
        ),
    )

    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        self.own_vocabulary(cfg, allowed=(None, "listops"))
        return listops.ListOpsTokenizer()

    def dataset(self, source: SplitSource) -> Any:
        return listops.ListOpsDataset(
            source.files(self), source.tokenizer, max_length=source.cfg.max_length
        )

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str]:
        return [str(d) for d in range(listops.NUM_CLASSES)]

    # ------------------------------------------------------------------------ compare
    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        params = {
            "train": preset.listops_train,
            "val": preset.listops_val,
            "test": preset.listops_test,
            "seed": seed,
            "min_length": preset.listops_min_length,
            "max_length": preset.listops_max_length,
        }
        paths = {s: listops.split_path(folder, s) for s in listops.SPLITS}
        if given and not all(p.is_file() for p in paths.values()):
            raise FileNotFoundError(
                f"--data {folder}: expected listops_train.tsv, listops_val.tsv and "
                "listops_test.tsv there (written by `longseq data listops --out DIR`)"
            )
        marker = folder / "params.json"
        if not given and not params_match(marker, params, paths):
            _generate(folder, params, log)
            marker.write_text(json.dumps(params) + "\n")
        read = {s: listops.read_split(p) for s, p in paths.items()}
        if given:  # lengths from the files: the longest source plus [cls]
            tok = listops.ListOpsTokenizer()
            max_length = 1 + max(len(tok.encode(src)) for ex in read.values() for src, _ in ex)
        else:
            max_length = params["max_length"]  # lengths < max_length, so tokens + [cls] <= it
        counts = {s: Counter(label for _, label in ex) for s, ex in read.items()}
        info = class_info(counts, listops.NUM_CLASSES, self.label_names(None, None))
        info["root_rule_test"] = root_rule_accuracy(read["train"], read["test"])
        info |= {"source": str(folder), "generator": None if given else params}
        return Splits(*(str(paths[s]) for s in listops.SPLITS), max_length, info)

    def chart_lines(self, info: dict[str, Any]) -> dict[str, float | None]:
        return {
            "majority class (test)": info.get("majority_test"),
            "root-operator rule (test)": info.get("root_rule_test"),
        }

    def describe_data(self, info: dict[str, Any]) -> str:
        g = info.get("generator")
        lengths = f", {g['min_length']} < length < {g['max_length']} tokens" if g else ""
        return (
            lengths
            + examples_text(info)
            + classes_text(info)
            + f", the root-operator rule (the most frequent answer for the root operator, "
            f"learned from train) {info['root_rule_test']:.1f}%"
        )


def _generate(folder: Path, params: dict[str, int], log: Log) -> None:
    total = params["train"] + params["val"] + params["test"]
    log(
        f"data: generating {total:,} ListOps examples ({params['min_length']} < length < "
        f"{params['max_length']}, seed {params['seed']}) into {folder}"
    )
    start = time.perf_counter()
    bar = progress_bar(total, "listops")
    listops.write_splits(
        folder,
        params["train"],
        params["val"],
        params["test"],
        params["seed"],
        min_length=params["min_length"],
        max_length=params["max_length"],
        progress=lambda kept, drawn: bar.update(kept - bar.n),
    )
    bar.close()
    log(f"data: done in {time.perf_counter() - start:.1f} s")


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


__all__ = ["LRA_LISTOPS", "ListOps", "root_rule_accuracy"]
