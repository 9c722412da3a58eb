"""Text classification: one label per document (JSON lines or CSV with text and label)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from longseq.data.datasets import TextClassificationDataset, load_label_names
from longseq.tasks.base import (
    CompareTask,
    SplitSource,
    Task,
    class_info,
    classes_text,
    examples_text,
)


class Classification(Task):
    name = "classification"
    architecture = "sequence-classification"
    metrics = ("loss", "accuracy", "macro_f1")
    best_metric = "accuracy"
    compare = (
        CompareTask(
            "shakespeare-genre",
            "classification",
            "shakespeare",
            "accuracy",
            "Shakespeare scenes by genre, bytes",
        ),
        CompareTask(
            "kernel-docs",
            "classification",
            "kernel-docs",
            "accuracy",
            "Linux kernel documents by subsystem, bytes",
        ),
    )

    def dataset(self, source: SplitSource) -> TextClassificationDataset:
        cfg = source.cfg
        return TextClassificationDataset(
            source.files(self),
            source.tokenizer,
            cfg.max_length,
            label_names=source.label_names,
            text_field=cfg.text_field,
            label_field=cfg.label_field,
        )

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str] | None:
        """data.label_names (a list or a labels.json), else labels.json beside data.train."""
        if isinstance(cfg.label_names, list):
            return cfg.label_names
        if isinstance(cfg.label_names, str):
            return load_label_names(cfg.label_names)
        if cfg.train is not None:  # `longseq data` writes labels.json beside the splits
            beside = Path(self.files(cfg.train, "train")).parent / "labels.json"
            if beside.is_file():
                return load_label_names(beside)
        return None

    def split_info(self, folder: Path, paths: dict[str, Path]) -> dict[str, Any]:
        names = load_label_names(folder / "labels.json")
        counts = {}
        for split, path in paths.items():
            with path.open(encoding="utf-8") as f:
                counts[split] = Counter(json.loads(line)["label"] for line in f if line.strip())
        return class_info(counts, len(names), names)

    def chart_lines(self, info: dict[str, Any]) -> dict[str, float | None]:
        return {"majority class (test)": info.get("majority_test")}

    def describe_data(self, info: dict[str, Any]) -> str:
        return examples_text(info) + classes_text(info)


__all__ = ["Classification"]
