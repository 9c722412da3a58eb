"""Batches: padding to what the mechanism needs, length buckets, masked-LM masking.

`Collator` pads a list of examples to the longest one rounded up to `pad_to_multiple_of`
(a model's `pad_multiple()`: BigBird's block, LSH's chunk), so the attention layer needs no
padding of its own. Padding is on the right: `attention_mask` 1 = real token, 0 = padding;
per-token `labels` are padded with -100 (ignored by the loss).

`BucketBatchSampler` cuts the (shuffled) dataset into mega-batches of `mega_batch` batches,
sorts each mega-batch by length and slices it into batches, so a batch holds sequences of
similar length (little padding) while the batch order stays random. Under data parallel
(`rank`, `world_size`) every rank builds the same global list and takes its own share:
consecutive sorted batches form one step's group, so the ranks' batches at a step have
similar lengths (no rank waits for a long one), and every rank gets the same number.

`mask_tokens` is BERT's masking: each real, non-special token is chosen with probability
p (0.15); a chosen token becomes [MASK] 80% of the time, a random token 10%, stays 10%;
labels are the original ids at chosen positions and -100 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Sampler, get_worker_info

from longseq.data.tokenizers import Tokenizer, load_tokenizer
from longseq.labels import IGNORE


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Collator:
    """Pad `input_ids` (and per-token fields) to the longest example, rounded up to a multiple.

    Fields: `input_ids` (padded with `pad_id`), `attention_mask` (built, or padded with 0 if
    given), `labels` (scalars stacked; sequences padded with -100), any other per-token field
    such as `global_attention_mask` (padded with 0) and any other scalar field (stacked).
    """

    def __init__(self, pad_id: int = 0, pad_to_multiple_of: int = 1) -> None:
        if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be an int >= 1, got {pad_to_multiple_of!r}")
        self.pad_id = pad_id
        self.multiple = pad_to_multiple_of

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty batch")
        ids = [torch.as_tensor(f["input_ids"], dtype=torch.long) for f in features]
        if any(t.dim() != 1 for t in ids):
            raise ValueError("every example's input_ids must be 1-D")
        lengths = [len(t) for t in ids]
        width = round_up(max(lengths), self.multiple)
        batch = {
            "input_ids": self._pad(ids, width, self.pad_id),
            "attention_mask": self._pad(
                [torch.ones(n, dtype=torch.long) for n in lengths], width, 0
            ),
        }
        for key in features[0]:
            if key == "input_ids":
                continue
            values = [torch.as_tensor(f[key]) for f in features]
            if all(v.dim() == 0 for v in values):
                batch[key] = torch.stack(values)
            elif all(v.dim() == 1 and len(v) == n for v, n in zip(values, lengths, strict=True)):
                batch[key] = self._pad(values, width, IGNORE if key == "labels" else 0)
            else:
                raise ValueError(
                    f"field {key!r} is neither a scalar nor one value per token in every example"
                )
        return batch

    @staticmethod
    def _pad(seqs: Sequence[torch.Tensor], width: int, value: int) -> torch.Tensor:
        out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype)
        for row, seq in zip(out, seqs, strict=True):
            row[: len(seq)] = seq
        return out


def make_collate(tokenizer: Any, multiple: int) -> Collator:
    """The Collator of a task's batches: `tokenizer`'s padding id, lengths to `multiple`."""
    return Collator(pad_id=tokenizer.pad_id, pad_to_multiple_of=multiple)


def dataset_lengths(ds: Any) -> list[int]:
    """Token count of every example (the `lengths` attribute when the dataset has one)."""
    lengths = getattr(ds, "lengths", None)
    if lengths is not None:
        return list(lengths)
    examples, tok = getattr(ds, "examples", None), getattr(ds, "tokenizer", None)
    if examples is not None and tok is not None:  # ListOps: [cls] + tokens, no tensors built
        return [1 + len(tok.encode(source)) for source, _ in examples]
    return [len(ds[i]["input_ids"]) for i in range(len(ds))]


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices of similar length; shuffled, deterministic in (seed, epoch), DDP-aware.

    With `drop_last=False` every example appears (the last batch may be smaller) and, when the
    batch count does not divide by `world_size`, the first batches are repeated so every rank
    gets the same number (as `DistributedSampler` repeats examples). With `drop_last=True` the
    short batch and the batches left over after an even split are dropped.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        mega_batch: int = 50,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1 or mega_batch < 1:
            raise ValueError(
                f"batch_size ({batch_size}) and mega_batch ({mega_batch}) must be >= 1"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..world_size-1 (world_size {world_size})")
        self.lengths = torch.as_tensor(list(lengths), dtype=torch.long)
        if len(self.lengths) == 0:
            raise ValueError("no examples to batch")
        self.batch_size, self.mega_batch = batch_size, mega_batch
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        n = len(self.lengths)
        total = n // batch_size if drop_last else math.ceil(n / batch_size)
        self.per_rank = total // world_size if drop_last else math.ceil(total / world_size)
        if self.per_rank == 0:
            raise ValueError(
                f"{n} examples make no full batch of {batch_size} for each of {world_size} "
                "rank(s): use a smaller batch_size or drop_last=False"
            )
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order; `start` skips that many of this rank's batches (resume)."""
        if not 0 <= start <= self.per_rank:
            raise ValueError(f"start={start} is outside 0..{self.per_rank} batches")
        self.epoch, self.start = epoch, start

    def global_batches(self) -> list[list[int]]:
        """All ranks' batches for this epoch, grouped so batch k*world_size + r is rank r's k-th."""
        n, bs = len(self.lengths), self.batch_size
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        batches: list[list[int]] = []
        chunk = bs * self.mega_batch
        for lo in range(0, n, chunk):
            idx = order[lo : lo + chunk]
            # Longest first; stable so equal lengths keep the shuffled order.
            idx = idx[torch.sort(self.lengths[idx], descending=True, stable=True).indices]
            batches += [idx[i : i + bs].tolist() for i in range(0, len(idx), bs)]
        if self.drop_last and len(batches[-1]) < bs:
            batches.pop()
        w = self.world_size
        groups = [batches[i : i + w] for i in range(0, len(batches), w)]
        if len(groups[-1]) < w:
            if self.drop_last:
                groups.pop()
            else:
                groups[-1] += batches[: w - len(groups[-1])]
        if self.shuffle:
            # Random group order, but the group with the longest batch first: an
            # out-of-memory error shows at step 1 rather than hours in.
            longest = max(range(len(groups)), key=lambda k: max(self._len(b) for b in groups[k]))
            rest = [k for k in torch.randperm(len(groups), generator=g).tolist() if k != longest]
            groups = [groups[longest]] + [groups[k] for k in rest]
        return [b for group in groups for b in group]

    def _len(self, batch: list[int]) -> int:
        return int(self.lengths[batch].max())

    def __iter__(self) -> Iterator[list[int]]:
        mine = self.global_batches()[self.rank :: self.world_size]
        yield from mine[self.start :]

    def __len__(self) -> int:
        return self.per_rank - self.start


# ----------------------------------------------------------------------------- masked LM
def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (80% [MASK], 10% random, 10% kept): (masked inputs, labels with -100)."""
    if not 0.0 < probability < 1.0:
        raise ValueError(f"mask probability must be in (0, 1), got {probability}")
    special = torch.as_tensor(list(special_ids), dtype=input_ids.dtype)
    candidates = ~torch.isin(input_ids, special)
    if attention_mask is not None:
        candidates &= attention_mask.bool()
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & candidates
    if not chosen.any() and candidates.any():
        # A batch with no target would give a NaN loss: choose one candidate.
        where = candidates.flatten().nonzero().squeeze(1)
        pick = where[torch.randint(len(where), (), generator=generator)]
        chosen.view(-1)[pick] = True
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))
    r = torch.rand(input_ids.shape, generator=generator)
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[special[special < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1).to(input_ids.dtype)
    random_ids = pool[torch.randint(len(pool), input_ids.shape, generator=generator)]
    out = input_ids.clone()
    out[chosen & (r < 0.8)] = mask_id
    swap = chosen & (r >= 0.8) & (r < 0.9)
    out[swap] = random_ids[swap]
    return out, labels


class MaskedLMCollator:
    """Pad (as `Collator`) then mask (as `mask_tokens`) with a seeded generator.

    In the main process one generator (seeded by `seed`) runs through the batches;
    `state_dict()` / `load_state_dict()` save and restore it for an exact resume. In a
    DataLoader worker the generator is seeded from `seed` and the worker's seed, which torch
    derives from the main process's RNG, so runs stay reproducible.
    """

    def __init__(
        self,
        tokenizer: Tokenizer | str = "byte",
        pad_to_multiple_of: int = 1,
        probability: float = 0.15,
        seed: int = 0,
    ) -> None:
        self.tokenizer = load_tokenizer(tokenizer)
        if self.tokenizer.mask_id is None:
            raise ValueError(f"{self.tokenizer!r} has no mask token: masked-LM needs one")
        self.collate = Collator(self.tokenizer.pad_id, pad_to_multiple_of)
        self.probability = probability
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._worker: tuple[int, torch.Generator] | None = None
        specials = {self.tokenizer.pad_id, self.tokenizer.cls_id, self.tokenizer.sep_id}
        self.special_ids = sorted(specials | {self.tokenizer.mask_id})

    def _generator(self) -> torch.Generator:
        info = get_worker_info()
        if info is None:
            return self.generator
        if self._worker is None or self._worker[0] != info.seed:
            seed = (info.seed ^ (self.seed * 1_000_003)) % 2**63
            self._worker = (info.seed, torch.Generator().manual_seed(seed))
        return self._worker[1]

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collate([{"input_ids": f["input_ids"]} for f in features])
        batch["input_ids"], batch["labels"] = mask_tokens(
            batch["input_ids"],
            mask_id=self.tokenizer.mask_id,
            vocab_size=self.tokenizer.vocab_size,
            special_ids=self.special_ids,
            attention_mask=batch["attention_mask"],
            probability=self.probability,
            generator=self._generator(),
        )
        return batch

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
