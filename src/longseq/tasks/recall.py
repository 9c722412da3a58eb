"""Multi-query associative recall by distance (`longseq.data.recall`): every query token is
labelled with its pair's value; accuracy by distance shows what each pattern reaches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longseq.data import recall
from longseq.data.collate import Collator
from longseq.labels import IGNORE
from longseq.tasks.base import (
    CompareTask,
    Log,
    Splits,
    SplitSource,
    Task,
    params_match,
    progress_bar,
)


class Recall(Task):
    name = "recall"
    architecture = "token-classification"
    metrics = ("loss", "accuracy")
    compare = (
        CompareTask(
            "recall", "recall", None, "accuracy", "associative recall by distance", "recall"
        ),
    )
    report_section = "longseq.compare.recall_report:section"

    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        """The vocabulary of the generator's spec.json beside data.train."""
        self.own_vocabulary(cfg)
        if cfg.train is None:
            raise ValueError("task recall reads its vocabulary from spec.json beside data.train")
        return recall.RecallTokenizer(recall.read_spec(Path(self.files(cfg.train, "train")).parent))

    def dataset(self, source: SplitSource) -> recall.RecallDataset:
        return recall.RecallDataset(source.files(self), max_length=source.cfg.max_length)

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str]:
        return [str(v) for v in range(tokenizer.spec.values)]

    def by_distance(self, model: Any, cfg: Any, tokenizer: Any) -> list[list[float]]:
        return accuracy_by_distance(model, recall.RecallDataset(cfg.test))

    def predict_input(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A `longseq data recall` line: its values become token_type_ids."""
        if "pairs" in doc and "token_type_ids" not in doc:
            return {**doc, "token_type_ids": recall.features(doc)["token_type_ids"]}
        return doc

    # ------------------------------------------------------------------------ compare
    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        paths = {s: recall.split_path(folder, s) for s in recall.SPLITS}
        if given:
            if not all(p.is_file() for p in paths.values()):
                raise FileNotFoundError(
                    f"--data {folder}: expected recall_train.jsonl, recall_val.jsonl, "
                    "recall_test.jsonl and spec.json there (written by `longseq data recall`)"
                )
            spec = recall.read_spec(folder)
        else:
            spec = recall_spec(preset)
            sizes = {
                "train": preset.recall_train,
                "val": preset.recall_val,
                "test": preset.recall_test,
            }
            want = {"spec": spec.to_dict(), "sizes": sizes, "seed": seed}
            if not params_match(folder / recall.SPEC_JSON, want, paths):
                total = sum(sizes.values())
                log(
                    f"data: generating {total:,} recall examples ({spec.length} tokens, "
                    f"{spec.pairs} pairs, seed {seed}) into {folder}"
                )
                bar = progress_bar(total, "recall")
                recall.write_splits(
                    folder, spec, sizes, seed, progress=lambda k: bar.update(k - bar.n)
                )
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
        return Splits(*(str(paths[s]) for s in recall.SPLITS), spec.length, info)

    def chart_lines(self, info: dict[str, Any]) -> dict[str, float | None]:
        return {"chance": info.get("chance")}

    def describe_data(self, info: dict[str, Any]) -> str:
        spec = info["recall_spec"]
        ranges = ", ".join(f"{a}-{b}" for a, b in spec["distances"])
        ex = info["examples"]
        return (
            f", {ex['train']:,} / {ex['val']:,} / {ex['test']:,} examples"
            f", {spec['length']} tokens, {spec['pairs']} key->value pairs and their queries per "
            f"sequence, {spec['keys']} keys, {spec['values']} values (chance "
            f"{info['chance']:.1f}%), query distances from the ranges {ranges}"
        )


def recall_spec(preset: Any) -> recall.RecallSpec:
    """The recall data of `preset`: distances within a window of the preset's `reach` keys
    (Longformer's under the preset): its one-layer reach (1 .. reach/2), beyond it but within
    its num_layers-hop reach (.. L reach/2), and far."""
    half = preset.reach // 2
    reach = preset.num_layers * half
    if reach + 1 > preset.recall_length - 1:
        raise ValueError(
            f"preset {preset.name!r}: recall_length={preset.recall_length} leaves no distance "
            f"beyond a {preset.reach}-key window's {preset.num_layers}-layer reach "
            f"({preset.num_layers} x {half}); raise recall_length or lower reach "
            "(--set recall_length=...)"
        )
    return recall.RecallSpec(
        length=preset.recall_length,
        pairs=preset.recall_pairs,
        keys=preset.recall_keys,
        values=preset.recall_values,
        filler=preset.recall_filler,
        distances=((1, half), (half + 1, reach), (reach + 1, preset.recall_length - 1)),
    )


def accuracy_by_distance(
    model: Any, dataset: recall.RecallDataset, batch_size: int = 64, device: str = "cpu"
) -> list[list[int]]:
    """[distance, correct, total] for every distance present, in the model's predictions."""
    # the trainer's padding: per-token fields with 0, labels with IGNORE, the attention mask
    collate = Collator(pad_id=0, pad_to_multiple_of=model.pad_multiple())
    counts: dict[int, list[int]] = {}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            exs = dataset.examples[start : start + batch_size]
            batch = collate(
                [{k: torch.tensor(v) for k, v in recall.features(ex).items()} for ex in exs]
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            dist, labels = batch.pop("distance"), batch.pop("labels")
            hit = model(**batch).logits.argmax(-1) == labels
            real = labels != IGNORE
            for d, h in zip(dist[real].tolist(), hit[real].tolist(), strict=True):
                c = counts.setdefault(d, [0, 0])
                c[0] += int(h)
                c[1] += 1
    return [[d, c, t] for d, (c, t) in sorted(counts.items())]


__all__ = ["Recall", "accuracy_by_distance", "recall_spec"]
