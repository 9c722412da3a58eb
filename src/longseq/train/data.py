"""From the `data` section to batches: the task's datasets (`longseq.tasks`), the resumable
batch stream, eval.

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
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from longseq import tasks
from longseq.data.collate import BucketBatchSampler, dataset_lengths
from longseq.train.config import DataConfig


@dataclass
class TaskData:
    """A task's tokenizer and datasets per split (None: no such split), and its labels."""

    task: tasks.Task
    tokenizer: Any
    train: Dataset | None
    val: Dataset | None
    test: Dataset | None
    label_names: list[str] | None = None


def resolve_tokenizer(cfg: DataConfig, init_from: str | None, given: Any = None) -> Any:
    """The tokenizer given, else the task's (`Task.tokenizer`)."""
    return given if given is not None else tasks.get(cfg.task).tokenizer(cfg, init_from)


def build_task_data(
    cfg: DataConfig,
    *,
    seed: int,
    tokenizer: Any,
    train: Dataset | None = None,
    val: Dataset | None = None,
    test: Dataset | None = None,
) -> TaskData:
    """The task's datasets: the ones given, else those the files in `cfg` make. A dataset
    that resolves its own label names (classification) passes them on to the next split."""
    task = tasks.get(cfg.task)
    given = {"train": train, "val": val, "test": test}
    label_names = task.label_names(cfg, tokenizer)
    out: dict[str, Dataset | None] = {}
    for split in ("train", "val", "test"):
        path = getattr(cfg, split)
        if given[split] is not None:
            out[split] = given[split]
        elif path is None:
            out[split] = None
        else:
            source = tasks.SplitSource(cfg, tokenizer, path, split, seed, label_names)
            out[split] = task.dataset(source)
            label_names = getattr(out[split], "label_names", label_names)
    if out["train"] is None:
        raise ValueError("no training data: set data.train (a file path) or pass a dataset")
    if label_names is None:
        label_names = getattr(out["train"], "label_names", None)
    return TaskData(task, tokenizer, out["train"], out["val"], out["test"], label_names)


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


__all__ = [
    "BatchStream",
    "TaskData",
    "build_task_data",
    "eval_loader",
    "resolve_tokenizer",
]
