"""Language modelling on plain text: causal (next token) and masked (BERT's 15%)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from longseq.data.collate import dataset_lengths, mask_tokens
from longseq.data.datasets import LMDataset
from longseq.tasks.base import CompareTask, SplitSource, Task


class LanguageModelling(Task):
    """Causal LM: blocks of data.max_length tokens cut from one or more text files."""

    name = "lm"
    architecture = "causal-lm"
    metrics = ("loss", "perplexity", "bpb")
    causal = True
    several_files = True
    split_suffix = "txt"
    compare = (
        CompareTask(
            "shakespeare-lm", "lm", "shakespeare", "bpb", "Shakespeare's plays, byte-level LM"
        ),
        CompareTask("gcide-lm", "lm", "gcide", "bpb", "GCIDE dictionary, byte-level LM"),
    )

    def dataset(self, source: SplitSource) -> Dataset:
        cfg = source.cfg
        return LMDataset(
            source.files(self),
            source.tokenizer,
            cfg.max_length,
            random_offset=cfg.random_offset and source.split == "train",
            seed=source.seed,
        )

    def describe_data(self, info: dict[str, Any]) -> str:
        return f", blocks of {info['max_length']} bytes"


class MaskedLanguageModelling(LanguageModelling):
    """Masked LM: the LM blocks with data.mlm_probability of their tokens masked."""

    name = "mlm"
    architecture = "masked-lm"
    metrics = ("loss", "perplexity", "accuracy")
    causal = False
    compare = ()

    def dataset(self, source: SplitSource) -> Dataset:
        base = super().dataset(source)
        return MaskedExamples(base, source.tokenizer, source.cfg.mlm_probability, source.seed)


class MaskedExamples(Dataset):
    """BERT masking of each example of `base`, the same whatever the batching: the masks of
    example i are drawn from a generator seeded by (seed, epoch, i), so a resumed stream and
    any number of DataLoader workers or processes see the same masks."""

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


__all__ = ["LanguageModelling", "MaskedExamples", "MaskedLanguageModelling"]
