"""From the `data` section to batches: datasets per task, the resumable batch stream, eval.

Every training batch is fixed by (seed, epoch, batch index): `BucketBatchSampler` orders an
epoch from seed + epoch, and masked-LM masks are drawn per example from a generator seeded by
(seed, epoch, example index). So the stream restarts exactly at a saved (epoch, index) with
any number of DataLoader workers, and the masks do not depend on how examples are split
across processes.

Data parallel: the global batch of `batch_size` sequences is split into `world_size` rank
batches of consecutive length-sorted examples. The sampler's mega-batch is scaled by the
world size, so the global batches (hence the loss curve) are the same for any world size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from longseq.data.collate import BucketBatchSampler, Collator, mask_tokens
from longseq.train.config import DataConfig

ARCHITECTURE: dict[str, str] = {
    "classification": "sequence-classification",
    "listops": "sequence-classification",
    "lm": "causal-lm",
    "mlm": "masked-lm",
    "recall": "token-classification",
    "qa": "question-answering",
}


@dataclass
class TaskData:
    task: str
    tokenizer: Any
    train: Dataset | None
    val: Dataset | None
    test: Dataset | None
    label_names: list[str] | None = None


class MaskedExamples(Dataset):
    """BERT masking of each example of `base`, the same whatever the batching (see module)."""

    def __init__(self, base: Dataset, tokenizer: Any, probability: float, seed: int) -> None:
        if getattr(tokenizer, "mask_id", None) is None:
            raise ValueError(f"{tokenizer!r} has no mask token, which task mlm needs")
        self.base, self.tokenizer = base, tokenizer
        self.probability, self.seed, self.epoch = probability, seed, 0
        self.special_ids = sorted(
            {tokenizer.pad_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id}
        )
        self.lengths = dataset_lengths(base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.as_tensor(self.base[i]["input_ids"], dtype=torch.long)
        seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_000_007 + i) % 2**63
        masked, labels = mask_tokens(
            ids[None],
            mask_id=self.tokenizer.mask_id,
            vocab_size=self.tokenizer.vocab_size,
            special_ids=self.special_ids,
            probability=self.probability,
            generator=torch.Generator().manual_seed(seed),
        )
        return {"input_ids": masked[0], "labels": labels[0]}


def dataset_lengths(ds: Any) -> list[int]:
    """Token count of every example (the `lengths` attribute when the dataset has one)."""
    lengths = getattr(ds, "lengths", None)
    if lengths is not None:
        return list(lengths)
    examples, tok = getattr(ds, "examples", None), getattr(ds, "tokenizer", None)
    if examples is not None and tok is not None:  # ListOps: [cls] + tokens, no tensors built
        return [1 + len(tok.encode(source)) for source, _ in examples]
    return [len(ds[i]["input_ids"]) for i in range(len(ds))]


def _files(value: str | list[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _one(value: str | list[str], where: str) -> str:
    files = _files(value) or []
    if len(files) != 1:
        raise ValueError(f"data.{where} must name one file for this task, got {files}")
    return files[0]


def _label_names(cfg: DataConfig) -> list[str] | None:
    from longseq.data.datasets import load_label_names

    if isinstance(cfg.label_names, list):
        return cfg.label_names
    if isinstance(cfg.label_names, str):
        return load_label_names(cfg.label_names)
    if cfg.train is not None:  # `longseq data` writes labels.json beside the splits
        beside = Path(_one(cfg.train, "train")).parent / "labels.json"
        if beside.is_file():
            return load_label_names(beside)
    return None


def resolve_tokenizer(cfg: DataConfig, init_from: str | None, given: Any = None) -> Any:
    from longseq.data.tokenizers import CONFIG_NAME, load_tokenizer

    if given is not None:
        return given
    if cfg.task == "listops":
        from longseq.data.listops import ListOpsTokenizer

        if cfg.tokenizer not in (None, "listops"):
            raise ValueError("task listops has its own vocabulary: leave data.tokenizer unset")
        return ListOpsTokenizer()
    if cfg.task == "recall":
        from longseq.data.recall import RecallTokenizer, read_spec

        if cfg.tokenizer is not None:
            raise ValueError("task recall has its own vocabulary: leave data.tokenizer unset")
        if cfg.train is None:
            raise ValueError("task recall reads its vocabulary from spec.json beside data.train")
        return RecallTokenizer(read_spec(Path(_one(cfg.train, "train")).parent))
    if cfg.tokenizer is not None:
        return load_tokenizer(cfg.tokenizer)
    if cfg.task == "qa" and cfg.train is not None:  # `longseq data gcide-qa` writes one
        beside = Path(_one(cfg.train, "train")).parent / "tokenizer.json"
        if beside.is_file():
            return load_tokenizer(beside)
    if init_from is not None and (Path(init_from) / CONFIG_NAME).is_file():
        return load_tokenizer(init_from)  # the tokenizer saved with the model
    return load_tokenizer("byte")


def split_dataset(
    cfg: DataConfig,
    tokenizer: Any,
    path: str | list[str],
    *,
    split: str = "test",
    seed: int = 0,
    label_names: list[str] | None = None,
) -> Dataset:
    """The dataset of one split of `cfg.task` from `path` (LM / MLM: one file or several).
    Classification maps labels by `label_names` (the train set's, so every split agrees)."""
    task = cfg.task
    if task in ("lm", "mlm"):
        from longseq.data.datasets import LMDataset

        ds = LMDataset(
            _files(path),
            tokenizer,
            cfg.max_length,
            random_offset=cfg.random_offset and split == "train",
            seed=seed,
        )
        return MaskedExamples(ds, tokenizer, cfg.mlm_probability, seed) if task == "mlm" else ds
    path = _one(path, split)
    if task == "classification":
        from longseq.data.datasets import TextClassificationDataset

        return TextClassificationDataset(
            path,
            tokenizer,
            cfg.max_length,
            label_names=label_names,
            text_field=cfg.text_field,
            label_field=cfg.label_field,
        )
    if task == "listops":
        from longseq.data.listops import ListOpsDataset

        return ListOpsDataset(path, tokenizer, max_length=cfg.max_length)
    if task == "qa":
        from longseq.data.gcide_qa import QADataset

        return QADataset(path, tokenizer, cfg.max_length)
    from longseq.data.recall import RecallDataset

    return RecallDataset(path, max_length=cfg.max_length)


def task_label_names(cfg: DataConfig, tokenizer: Any) -> list[str] | None:
    """The class names a task fixes (ListOps digits, recall values) or the config gives."""
    if cfg.task == "listops":
        from longseq.data.listops import NUM_CLASSES

        return [str(d) for d in range(NUM_CLASSES)]
    if cfg.task == "recall":
        return [str(v) for v in range(tokenizer.spec.values)]
    return _label_names(cfg) if cfg.task == "classification" else None


def build_task_data(
    cfg: DataConfig,
    *,
    seed: int,
    tokenizer: Any,
    train: Dataset | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
) -> TaskData:
    """The task's datasets: the ones given, else those the files in `cfg` make."""
    given = {"train": train, "val": val, "test": test}
    label_names = task_label_names(cfg, tokenizer)
    out: dict[str, Dataset | None] = {}
    for split in ("train", "val", "test"):
        path = getattr(cfg, split)
        if given[split] is not None:
            out[split] = given[split]
        elif path is None:
            out[split] = None
        else:
            out[split] = split_dataset(
                cfg, tokenizer, path, split=split, seed=seed, label_names=label_names
            )
            if cfg.task == "classification":  # val/test use the train set's names
                label_names = getattr(out[split], "label_names", label_names)
    if out["train"] is None:
        raise ValueError("no training data: set data.train (a file path) or pass a dataset")
    if cfg.task == "classification" and label_names is None:
        label_names = getattr(out["train"], "label_names", None)
    return TaskData(cfg.task, tokenizer, out["train"], out["val"], out["test"], label_names)


class BatchStream:
    """This rank's training batches from (epoch, index) on, forever; the position advances
    with every batch handed out, so it is exactly what a checkpoint must record."""

    def __init__(
        self,
        dataset: Dataset,
        collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
        *,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        mega_batch: int,
        num_workers: int,
        pin_memory: bool,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"data.batch_size={batch_size} is not divisible by the {world_size} processes: "
                "each process takes batch_size / world_size sequences"
            )
        self.dataset, self.collate = dataset, collate
        self.sampler = BucketBatchSampler(
            dataset_lengths(dataset),
            batch_size // world_size,
            shuffle=True,
            seed=seed,
            mega_batch=mega_batch * world_size,  # same global batches for any world size
            drop_last=True,
            rank=rank,
            world_size=world_size,
        )
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.epoch, self.index = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.sampler.per_rank

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            self.sampler.set_epoch(self.epoch, min(self.index, self.sampler.per_rank))
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            loader = DataLoader(
                self.dataset,
                batch_sampler=self.sampler,
                collate_fn=self.collate,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                # Its own generator: creating an iterator must not draw from the global RNG,
                # which drives dropout and must continue exactly after a resume.
                generator=torch.Generator().manual_seed(0),
            )
            for batch in loader:
                self.index += 1
                yield batch
            self.epoch, self.index = self.epoch + 1, 0


def eval_loader(
    dataset: Dataset,
    collate: Callable[[Sequence[dict[str, Any]]], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    max_batches: int | None,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    """This rank's share of the evaluation batches: every example once over all ranks (or a
    fixed random subset of `max_batches` batches), never repeated, so sums are exact."""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    sampler = BucketBatchSampler(dataset_lengths(dataset), batch_size, shuffle=True, seed=12345)
    batches = sampler.global_batches()[:max_batches][rank::world_size]
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def make_collate(tokenizer: Any, multiple: int) -> Collator:
    return Collator(pad_id=tokenizer.pad_id, pad_to_multiple_of=multiple)


__all__ = [
    "ARCHITECTURE",
    "BatchStream",
    "MaskedExamples",
    "TaskData",
    "build_task_data",
    "dataset_lengths",
    "eval_loader",
    "make_collate",
    "resolve_tokenizer",
    "split_dataset",
    "task_label_names",
]
