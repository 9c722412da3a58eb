"""Use a trained model on new documents: labels, token labels, masked tokens, answer spans.

    predictor = Predictor(model, tokenizer, batch_size=8)
    for record in predictor.predict([{"text": doc1}, {"text": doc2}]):   # lazily, in order
        print(record)

Documents are encoded as the training data was (`longseq.data`): `[cls] text [sep]` for
classification, `[cls] question [sep] context` with the question global for QA, the plain
tokens for token classification and masked LM. A document longer than max_length (default and
at most the model's) is cut (the record says `"truncated": true`). What each architecture returns:

    sequence-classification  label, probabilities of the top_k labels
    token-classification     per token: the token's text and its label (or pass input_ids)
    masked-lm                per mask (`mask_token` in the text): the top_k tokens and their
                             probabilities, and the text with each mask filled by the best
    question-answering       the answer text (a span of the context, at most max_answer
                             tokens), its character offsets and its score
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from longseq.data.collate import Collator

ARCHITECTURES = (
    "sequence-classification",
    "token-classification",
    "masked-lm",
    "question-answering",
)


class Predictor:
    """Batched predictions of `model` (eval mode, no gradients) for documents given as dicts:
    {"text": ...}, QA {"question": ..., "context": ...} (or "text" as the context), token
    classification also {"input_ids": [...], "token_type_ids": [...]}. `read` turns a task's
    own document into these (`longseq.tasks.Task.predict_input`: recall's pairs -> types)."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        top_k: int = 5,
        mask_token: str | None = None,
        max_answer: int = 128,
        read: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        arch = model.config.architecture
        if arch not in ARCHITECTURES:
            hint = "; use `longseq generate` for a causal LM" if arch == "causal-lm" else ""
            raise ValueError(f"predict handles {', '.join(ARCHITECTURES)}, not {arch!r}{hint}")
        if batch_size < 1 or top_k < 1:
            raise ValueError(f"batch_size and top_k must be >= 1, got {batch_size}, {top_k}")
        self.model, self.tokenizer, self.arch = model.eval(), tokenizer, arch
        limit = model.config.max_length
        if max_length is not None and max_length > limit:
            raise ValueError(
                f"max_length={max_length} exceeds this model's max_length={limit} (the longest "
                f"input it was built for); pass --max-length {limit} or less (or leave it out), "
                "or extend the model first with `longseq longify`"
            )
        self.max_length = max_length or limit
        self.batch_size, self.top_k, self.max_answer = batch_size, top_k, max_answer
        self.read = read or (lambda doc: doc)
        specials = getattr(tokenizer, "special_tokens", {})
        self.mask_token = mask_token or specials.get("mask") or "<mask>"
        self.labels = model.config.label_names or [str(i) for i in range(model.config.num_labels)]
        self.device = next(model.parameters()).device

    # ------------------------------------------------------------------------ encoding
    def encode(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Model inputs of one document (as the task reads it), and what decoding needs."""
        tok, n = self.tokenizer, self.max_length
        doc = self.read(doc)
        if self.arch == "question-answering":
            context = doc.get("context", doc.get("text"))
            if not isinstance(doc.get("question"), str) or not isinstance(context, str):
                raise ValueError("a QA document needs 'question' and 'context' (or 'text')")
            head = [tok.cls_id, *tok.encode(doc["question"]), tok.sep_id]
            ids, offsets = tok.encode_with_offsets(context)
            room = n - len(head)
            if room <= 0:
                raise ValueError(f"the question alone takes {len(head)} >= {n} tokens")
            glob = [1] * len(head) + [0] * min(room, len(ids))
            return {
                "input_ids": head + ids[:room],
                "global_attention_mask": glob,
                "head": len(head),
                "offsets": offsets[:room],
                "context": context,
                "truncated": len(ids) > room,
            }
        if self.arch == "token-classification" and "input_ids" in doc:
            if "token_type_ids" not in doc and self.model.config.type_vocab_size > 2:
                raise ValueError(
                    f"this model reads token_type_ids (type_vocab_size "
                    f"{self.model.config.type_vocab_size}): give them in each JSON line"
                )
            ids = [int(i) for i in doc["input_ids"]]
            item: dict[str, Any] = {"input_ids": ids[:n], "truncated": len(ids) > n, "ids": 1}
            if "token_type_ids" in doc:
                item["token_type_ids"] = [int(i) for i in doc["token_type_ids"]][:n]
            return item
        text = doc.get("text")
        if not isinstance(text, str):
            raise ValueError("a document needs a 'text' string")
        if self.arch == "sequence-classification":
            ids = tok.encode(text)
            return {
                "input_ids": [tok.cls_id, *ids[: n - 2], tok.sep_id],
                "truncated": len(ids) > n - 2,
            }
        if self.arch == "masked-lm":
            if tok.mask_id is None:
                raise ValueError("this tokenizer has no mask token: it cannot fill masks")
            pieces = text.split(self.mask_token)
            if len(pieces) == 1:
                raise ValueError(f"no {self.mask_token!r} in the text: nothing to fill")
            ids = list(tok.encode(pieces[0]))
            for piece in pieces[1:]:
                ids += [tok.mask_id, *tok.encode(piece)]
            if ids[:n].count(tok.mask_id) < len(pieces) - 1:
                raise ValueError(f"a mask lies beyond max_length={n} tokens")
            return {"input_ids": ids[:n], "truncated": len(ids) > n, "pieces": pieces}
        ids = tok.encode(text)
        return {"input_ids": ids[:n], "truncated": len(ids) > n}

    # ------------------------------------------------------------------------ running
    def predict(self, docs: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        """One record per document, in order, computed batch by batch as they are read."""
        batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for doc in docs:
            batch.append((doc, self.encode(doc)))
            if len(batch) == self.batch_size:
                yield from self._run(batch)
                batch = []
        if batch:
            yield from self._run(batch)

    @torch.no_grad()
    def _run(self, batch: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, Any]]:
        items = [item for _, item in batch]
        inputs = self._collate(items)
        out = self.model(**inputs)
        records = []
        for i, (doc, item) in enumerate(batch):
            record = {k: doc[k] for k in ("id", "source") if k in doc}
            record.update(self._decode(i, item, out, inputs))
            record["truncated"] = item["truncated"]
            records.append(record)
        return records

    def _collate(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        """The model inputs, right-padded by the data's Collator (to the model's block
        multiple, within max_length)."""
        keys = ["input_ids", "token_type_ids"]
        if getattr(self.model, "supports_global", False):
            keys.append("global_attention_mask")
        feats = [{k: it[k] for k in keys if k in it} for it in items]
        longest = max(len(it["input_ids"]) for it in items)
        collate = Collator(self.tokenizer.pad_id, self.model.pad_multiple(longest))
        return {k: v.to(self.device) for k, v in collate(feats).items()}

    def _decode(self, i: int, item: dict[str, Any], out: Any, inputs: dict) -> dict[str, Any]:
        tok, k = self.tokenizer, self.top_k
        if self.arch == "sequence-classification":
            probs = out.logits[i].float().softmax(-1)
            top = probs.topk(min(k, probs.numel()))
            names = [self.labels[j] for j in top.indices.tolist()]
            return {
                "label": names[0],
                "probabilities": dict(zip(names, top.values.tolist(), strict=True)),
            }
        if self.arch == "token-classification":
            n = len(item["input_ids"])
            pred = out.logits[i, :n].argmax(-1).tolist()
            ids = item["input_ids"]
            tokens = ids if "ids" in item else [tok.decode([t]) for t in ids]
            return {"tokens": tokens, "labels": [self.labels[j] for j in pred]}
        if self.arch == "masked-lm":
            ids = item["input_ids"]
            where = [p for p, t in enumerate(ids) if t == tok.mask_id]
            probs = out.logits[i, where].float().softmax(-1)
            top = probs.topk(min(k, probs.shape[-1]), dim=-1)
            masks = [
                [
                    {"token": tok.decode([t]), "id": t, "probability": p}
                    for t, p in zip(ti, pi, strict=True)
                ]
                for ti, pi in zip(top.indices.tolist(), top.values.tolist(), strict=True)
            ]
            pieces = item["pieces"]
            filled = pieces[0] + "".join(
                m[0]["token"] + piece for m, piece in zip(masks, pieces[1:], strict=True)
            )
            return {"masks": masks, "filled": filled}
        from longseq.data.gcide_qa import best_spans

        head, n = item["head"], len(item["input_ids"])
        if n == head:  # no context left after the question
            return {"answer": "", "start": 0, "end": 0, "score": float("-inf")}
        start = out.start_logits[i : i + 1, :n].float()
        end = out.end_logits[i : i + 1, :n].float()
        first = torch.tensor([head], device=start.device)
        s, e = best_spans(start, end, first, self.max_answer)[0].tolist()
        a, b = item["offsets"][s - head][0], item["offsets"][e - head][1]
        return {
            "answer": item["context"][a:b],
            "start": a,
            "end": b,
            "score": float(start[0, s] + end[0, e]),
        }


__all__ = ["ARCHITECTURES", "Predictor"]
