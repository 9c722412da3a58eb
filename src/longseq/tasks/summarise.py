"""Summarisation of long documents with a causal (instruct) decoder.

Data: JSON lines of {"text": document, "summary": reference, "instruction": ...} (`longseq
data manpages`, `longseq data aclsum`; "instruction" may be left out: `INSTRUCTION`). An
example is the conversation "user: DOCUMENT + instruction; assistant: SUMMARY" in the
tokenizer's chat template (`longseq.data.chat`); the instruction comes after the document, so
a model with a sliding window still sees it when it writes. The document is cut to fit
data.max_length (its first tokens are kept); the labels are the summary's tokens and the
end-of-turn token only, so `longseq train` fine-tunes on the summary and `longseq evaluate`'s
loss is the reference summary's loss per token given the (cut) document.

Scores, split by the document's length in tokens (`BUCKETS`: < 2K, 2K-8K, > 8K):

- the reference's loss per token (`summary_losses`: one forward per document, the
  vocabulary projection on the summary's positions only);
- ROUGE-1/2/L F1 (Google's `rouge-score`, Porter stemming) of a greedy summary written by
  `longseq predict` (`SummaryPredictor`), against the reference.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from longseq.data.chat import ChatPrompt
from longseq.labels import IGNORE
from longseq.tasks.base import SplitSource, Task

INSTRUCTION = "Summarise this document in one or two sentences."
BUCKETS: tuple[tuple[str, int, float], ...] = (
    ("<2K", 0, 2048),
    ("2K-8K", 2048, 8192),
    (">8K", 8192, math.inf),
)
ROUGE = ("rouge1", "rouge2", "rougeL")


def bucket(doc_tokens: int) -> str:
    """The length bucket of a document of `doc_tokens` tokens."""
    return next(name for name, lo, hi in BUCKETS if lo <= doc_tokens < hi)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON lines of a summarisation split, checked."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec.get("text"), str) or not isinstance(rec.get("summary"), str):
                    raise ValueError("needs 'text' and 'summary' strings")
            except ValueError as e:
                raise ValueError(f"{path}:{number}: not a summarisation example ({e})") from None
            out.append(rec)
    if not out:
        raise ValueError(f"{path}: no examples")
    return out


class Prompts:
    """The chat prompt of each instruction, built once per tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._get = lru_cache(maxsize=16)(lambda text: ChatPrompt.build(tokenizer, text))

    def __call__(self, record: dict[str, Any]) -> ChatPrompt:
        return self._get(record.get("instruction") or INSTRUCTION)


def encode_example(
    prompts: Prompts, record: dict[str, Any], max_length: int, doc_limit: int | None = None
) -> dict[str, Any]:
    """input_ids (the prompt with the document's first tokens, then the summary and its end),
    labels (IGNORE but on the summary and end), doc_tokens (the whole document's length)."""
    chat = prompts(record)
    doc = prompts.tokenizer.encode(record["text"])
    target = chat.target(record["summary"])
    room = max_length - chat.overhead - len(target)
    if room <= 0:
        raise ValueError(
            f"max_length={max_length} leaves no room for the document: the prompt takes "
            f"{chat.overhead} tokens and the summary {len(target)}"
        )
    keep = min(room, doc_limit if doc_limit is not None else room)
    prompt = chat.prompt(doc[:keep])
    return {
        "input_ids": prompt + target,
        "labels": [IGNORE] * len(prompt) + target,
        "doc_tokens": len(doc),
        "read_tokens": min(len(doc), keep),
    }


class SummaryDataset:
    """One split's examples (`encode_example`), for training and evaluation."""

    def __init__(self, path: str | Path, tokenizer: Any, max_length: int) -> None:
        self.records = read_records(path)
        self.tokenizer, self.max_length = tokenizer, max_length
        prompts = Prompts(tokenizer)
        self.items = [encode_example(prompts, r, max_length) for r in self.records]
        self.lengths = [len(it["input_ids"]) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        it = self.items[i]
        return {"input_ids": torch.tensor(it["input_ids"]), "labels": torch.tensor(it["labels"])}


@torch.no_grad()
def summary_loss(model: Any, input_ids: list[int], labels: list[int]) -> tuple[float, int]:
    """(sum of the summary tokens' negative log-likelihoods, their number) for one example:
    one forward of the body, the vocabulary projection on the summary's positions only."""
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)
    n = ids.shape[1]
    pad = model.pad_multiple(n)
    padded = n if pad <= 1 else -(-n // pad) * pad
    mask = None
    if padded != n:
        mask = torch.zeros(1, padded, dtype=torch.long, device=device)
        mask[:, :n] = 1
        ids = torch.cat([ids, ids.new_zeros(1, padded - n)], 1)
    out = model.encode(ids, mask, None, None, False, None, None)
    h = out[0][0, :n]
    target = torch.tensor(labels, device=device)
    where = (target[1:] != IGNORE).nonzero().squeeze(-1)
    logits = model.lm_head(h[where]).float()
    nll = torch.nn.functional.cross_entropy(logits, target[1:][where], reduction="sum")
    return float(nll), int(where.numel())


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 (rouge-score, Porter stemmer)."""
    return {k: 100.0 * v.fmeasure for k, v in _scorer().score(reference, prediction).items()}


@lru_cache(maxsize=1)
def _scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ImportError(
            "ROUGE needs the rouge-score package: pip install rouge-score (make setup does)"
        ) from None
    return rouge_scorer.RougeScorer(list(ROUGE), use_stemmer=True)


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and its standard error (0 for one value)."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, se


def by_bucket(rows: Iterable[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, dict]:
    """Per length bucket (and "all"): n and (mean, standard error) of each key over the rows
    (each row one document: "doc_tokens" and the keys)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(bucket(int(r["doc_tokens"])), []).append(r)
        groups.setdefault("all", []).append(r)
    order = [name for name, _, _ in BUCKETS if name in groups] + ["all"] * ("all" in groups)
    return {
        g: {"n": len(groups[g]), **{k: mean_se([float(r[k]) for r in groups[g]]) for k in keys}}
        for g in order
    }


class SummaryPredictor:
    """Greedy summaries of documents ({"text": ..., optional "summary", "instruction"}):
    the document cut so that prompt + summary fit max_length; ROUGE when a reference is
    given. Records: id/source, summary, doc_tokens, read_tokens, truncated, rouge*."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_length: int | None = None,
        max_new_tokens: int = 64,
        doc_limit: int | None = None,
        **_: Any,
    ) -> None:
        if model.config.architecture != "causal-lm":
            raise ValueError(f"summarisation needs a causal-lm model, not "
                             f"{model.config.architecture!r}")  # fmt: skip
        self.model, self.tokenizer = model.eval(), tokenizer
        limit = model.config.max_length
        if max_length is not None and max_length > limit:
            raise ValueError(f"max_length={max_length} exceeds this model's {limit}")
        self.max_length = max_length or limit
        self.max_new_tokens, self.doc_limit = max_new_tokens, doc_limit
        self.prompts = Prompts(tokenizer)

    def predict(self, docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        from longseq.models.generation import generate

        for doc in docs:
            if not isinstance(doc.get("text"), str):
                raise ValueError("a document needs a 'text' string")
            chat = self.prompts(doc)
            ids = self.tokenizer.encode(doc["text"])
            room = self.max_length - chat.overhead - self.max_new_tokens
            if room <= 0:
                raise ValueError(f"max_length={self.max_length} leaves no room for the document")
            keep = min(room, self.doc_limit or room)
            prompt = chat.prompt(ids[:keep])
            device = next(self.model.parameters()).device
            out = generate(
                self.model,
                torch.tensor([prompt], device=device),
                self.max_new_tokens,
                eos_token_id=chat.end_id,
            )
            new = [t for t in out.new_tokens(0).tolist() if t != chat.end_id]
            text = self.tokenizer.decode(new).strip()
            record = {k: doc[k] for k in ("id", "source") if k in doc}
            record |= {"summary": text, "doc_tokens": len(ids), "read_tokens": min(keep, len(ids)),
                       "truncated": len(ids) > keep}  # fmt: skip
            if isinstance(doc.get("summary"), str):
                record["reference"] = doc["summary"]
                record |= rouge(text, doc["summary"])
            yield record


class Summarisation(Task):
    """Summaries of long documents by a causal LM (see the module docstring)."""

    name = "summarisation"
    architecture = "causal-lm"
    metrics = ("loss", "perplexity", "bpb")
    causal = True

    def dataset(self, source: SplitSource) -> SummaryDataset:
        return SummaryDataset(source.files(self), source.tokenizer, source.cfg.max_length)

    def by_distance(self, model: Any, cfg: Any, tokenizer: Any) -> list[list[float]]:
        """[document tokens, summary NLL sum, summary tokens] per test document."""
        ds = self.dataset(SplitSource(cfg, tokenizer, cfg.test))
        rows = []
        for it in ds.items:
            nll, n = summary_loss(model, it["input_ids"], it["labels"])
            rows.append([it["doc_tokens"], nll, n])
        return rows

    def predict_input(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    def predictor(self, model: Any, tokenizer: Any, **options: Any) -> SummaryPredictor:
        return SummaryPredictor(model, tokenizer, **options)


__all__ = [
    "BUCKETS",
    "Summarisation",
    "SummaryDataset",
    "SummaryPredictor",
    "bucket",
    "by_bucket",
    "encode_example",
    "rouge",
    "summary_loss",
]
