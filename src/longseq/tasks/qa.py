"""Extractive question answering over long documents (`longseq.data.gcide_qa`): the answer is
a span of the context; exact match and F1, and both by the answer's distance."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from longseq.data import gcide_qa
from longseq.data.collate import make_collate
from longseq.data.tokenizers import CONFIG_NAME, HF_FILE, load_tokenizer
from longseq.tasks.base import CompareTask, SplitSource, Task


class QuestionAnswering(Task):
    name = "qa"
    architecture = "question-answering"
    metrics = ("loss", "exact_match", "f1")
    compare = (
        CompareTask(
            "gcide-qa",
            "qa",
            "gcide-qa",
            "f1",
            "GCIDE long-document QA (documents of dictionary entries)",
        ),
    )
    report_section = "longseq.compare.report:qa_by_distance"

    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        """data.tokenizer, else the one saved with the model in `init_from` (a pre-trained
        model reads only its own vocabulary), else `longseq data gcide-qa`'s tokenizer.json
        beside data.train (a model trained from scratch), else bytes."""
        saved = init_from is not None and (Path(init_from) / CONFIG_NAME).is_file()
        if cfg.tokenizer is None and not saved and cfg.train is not None:
            beside = Path(self.files(cfg.train, "train")).parent / HF_FILE
            if beside.is_file():
                return load_tokenizer(beside)
        return super().tokenizer(cfg, init_from)

    def dataset(self, source: SplitSource) -> gcide_qa.QADataset:
        return gcide_qa.QADataset(source.files(self), source.tokenizer, source.cfg.max_length)

    def by_distance(self, model: Any, cfg: Any, tokenizer: Any) -> list[list[float]]:
        return scores_by_distance(model, self.dataset(SplitSource(cfg, tokenizer, cfg.test)))

    def scores_by_position(
        self, model: Any, source: SplitSource, edges: list[int], batch_size: int = 16
    ) -> list[dict[str, Any]]:
        """Exact match and F1 (%) by where the answer ends in the input, every example of the
        file counted (those beyond the model's reach as misses)."""
        data = gcide_qa.QADataset(
            source.files(self), source.tokenizer, source.cfg.max_length, keep_unreachable=True
        )
        return by_position(scores_by_distance(model, data, batch_size), edges)

    def build(self, ct: CompareTask, preset: Any, folder: Path) -> None:
        # documents of about 3 characters per token of the preset's text_length
        gcide_qa.build(folder, length=3 * preset.text_length, progress=False)

    def describe_data(self, info: dict[str, Any]) -> str:
        return f", up to {info['max_length']} tokens per question + document"


def scores_by_distance(
    model: Any, dataset: gcide_qa.QADataset, batch_size: int = 16, max_answer: int = 128
) -> list[list[float]]:
    """[distance, exact, f1, end] per example of `dataset`, scored by `model` (eval mode):
    `distance` counts the context tokens before the answer, `end` is the input position of
    its last token. An answer out of reach (a `keep_unreachable` dataset) scores 0."""
    collate = make_collate(dataset.tokenizer, model.pad_multiple())
    use_global = getattr(model, "supports_global", False)
    rows: list[list[float]] = []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            idx = range(start, min(start + batch_size, len(dataset)))
            batch = collate([dataset[i] for i in idx])
            glob = batch.pop("global_attention_mask")
            gold = torch.stack([batch.pop("start_positions"), batch.pop("end_positions")], -1)
            out = model(**batch, global_attention_mask=glob if use_global else None)
            context_from = glob.sum(-1)
            pred = gcide_qa.best_spans(out.start_logits, out.end_logits, context_from, max_answer)
            exact, f1 = gcide_qa.span_scores(pred, gold)
            seen = (gold >= 0).all(-1)
            exact, f1 = exact * seen, f1 * seen
            for i, e, f in zip(idx, exact.tolist(), f1.tolist(), strict=True):
                item = dataset.items[i]
                rows.append([item["distance"], e, f, item["end"]])
    return rows


def by_position(rows: list[list[float]], edges: list[int]) -> list[dict[str, Any]]:
    """Exact match and F1 (%) of `scores_by_distance` rows by where the answer ends: one row
    per bucket [edges[i], edges[i+1]) of the answer's last input token that holds examples,
    as the causal LM's loss by position (`longseq evaluate --buckets 0,512,2048`)."""
    if len(edges) < 2 or edges[0] < 0 or any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError(f"bucket edges must be >= 2 increasing non-negative ints, got {edges}")
    out = []
    for a, b in itertools.pairwise(edges):
        inside = [r for r in rows if a <= r[3] < b]
        if inside:
            n = len(inside)
            out.append(
                {
                    "start": a,
                    "end": b,
                    "examples": n,
                    "exact_match": 100 * sum(r[1] for r in inside) / n,
                    "f1": 100 * sum(r[2] for r in inside) / n,
                }
            )
    return out


__all__ = ["QuestionAnswering", "by_position", "scores_by_distance"]
