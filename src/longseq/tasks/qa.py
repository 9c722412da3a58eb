"""Extractive question answering over long documents (`longseq.data.gcide_qa`): the answer is
a span of the context; exact match and F1, and both by the answer's distance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longseq.data import gcide_qa
from longseq.data.collate import make_collate
from longseq.data.tokenizers import HF_FILE, load_tokenizer
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
        """As any task's, but `longseq data gcide-qa`'s tokenizer.json beside data.train comes
        before the model's."""
        if cfg.tokenizer is None and cfg.train is not None:
            beside = Path(self.files(cfg.train, "train")).parent / HF_FILE
            if beside.is_file():
                return load_tokenizer(beside)
        return super().tokenizer(cfg, init_from)

    def dataset(self, source: SplitSource) -> gcide_qa.QADataset:
        return gcide_qa.QADataset(source.files(self), source.tokenizer, source.cfg.max_length)

    def by_distance(self, model: Any, cfg: Any, tokenizer: Any) -> list[list[float]]:
        return scores_by_distance(model, self.dataset(SplitSource(cfg, tokenizer, cfg.test)))

    def build(self, ct: CompareTask, preset: Any, folder: Path) -> None:
        # documents of about 3 characters per token of the preset's text_length
        gcide_qa.build(folder, length=3 * preset.text_length, progress=False)

    def describe_data(self, info: dict[str, Any]) -> str:
        return f", up to {info['max_length']} tokens per question + document"


def scores_by_distance(
    model: Any, dataset: gcide_qa.QADataset, batch_size: int = 16, max_answer: int = 128
) -> list[list[float]]:
    """[distance, exact, f1] per example of `dataset`, scored by `model` (eval mode)."""
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
            for i, e, f in zip(idx, exact.tolist(), f1.tolist(), strict=True):
                rows.append([dataset.items[i]["distance"], e, f])
    return rows


__all__ = ["QuestionAnswering", "scores_by_distance"]
