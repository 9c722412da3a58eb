"""Collation (padding, multiples), the bucketed sampler (determinism, DDP split), MLM masking."""

from __future__ import annotations

import random

import pytest
import torch

from longseq.data.collate import BucketBatchSampler, Collator, MaskedLMCollator, mask_tokens
from longseq.data.tokenizers import ByteTokenizer


# ----------------------------------------------------------------------------- collator
@pytest.mark.parametrize(("multiple", "width"), [(1, 5), (4, 8), (5, 5), (64, 64)])
def test_collator_pads_to_multiple(multiple: int, width: int) -> None:
    seqs = [[7, 8, 9], [4, 5, 6, 7, 8], [9]]
    feats = [
        {
            "input_ids": torch.tensor(s),
            "labels": torch.tensor(k),
            "global_attention_mask": [1] + [0] * (len(s) - 1),
        }
        for k, s in enumerate(seqs)
    ]
    batch = Collator(pad_id=0, pad_to_multiple_of=multiple)(feats)
    assert batch["input_ids"].shape == (3, width)
    for row, s in enumerate(seqs):
        assert batch["input_ids"][row, : len(s)].tolist() == s
        assert (batch["input_ids"][row, len(s) :] == 0).all()
        assert batch["attention_mask"][row].tolist() == [1] * len(s) + [0] * (width - len(s))
        assert batch["global_attention_mask"][row].tolist() == [1] + [0] * (width - 1)
    assert batch["labels"].tolist() == [0, 1, 2]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.long


def test_collator_per_token_labels_and_pad_id() -> None:
    feats = [{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}]
    batch = Collator(pad_id=9, pad_to_multiple_of=4)(feats)
    assert batch["input_ids"].tolist() == [[5, 6, 9, 9], [7, 9, 9, 9]]
    assert batch["labels"].tolist() == [[5, 6, -100, -100], [7, -100, -100, -100]]


def test_collator_errors() -> None:
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        Collator(0, 0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        Collator(0, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty batch"):
        Collator(0)([])
    with pytest.raises(ValueError, match="'spans'"):
        Collator(0)([{"input_ids": [1, 2], "spans": [1, 2, 3]}])


# ----------------------------------------------------------------------------- sampler
def lengths_of(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 500) for _ in range(n)]


def test_sampler_covers_every_example_once_and_is_deterministic() -> None:
    lengths = lengths_of(1003)
    s = BucketBatchSampler(lengths, 8, seed=1, mega_batch=10)
    batches = list(s)
    assert len(batches) == len(s) == 126
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1003))
    assert sum(len(b) < 8 for b in batches) == 1  # one short batch
    assert list(BucketBatchSampler(lengths, 8, seed=1, mega_batch=10)) == batches
    s.set_epoch(1)
    assert list(s) != batches  # a new order each epoch
    other_seed = BucketBatchSampler(lengths, 8, seed=2, mega_batch=10)
    assert list(other_seed) != batches
    s.set_epoch(0)
    assert list(s) == batches  # and back


def padding(lengths: list[int], batch: list[int]) -> int:
    return max(lengths[i] for i in batch) * len(batch) - sum(lengths[i] for i in batch)


def test_sampler_buckets_reduce_padding() -> None:
    lengths = lengths_of(4000)
    bucketed = list(BucketBatchSampler(lengths, 16, seed=0, mega_batch=50))
    waste = sum(padding(lengths, b) for b in bucketed)
    rng = random.Random(0)
    order = list(range(4000))
    rng.shuffle(order)
    plain = [order[i : i + 16] for i in range(0, 4000, 16)]
    waste_plain = sum(padding(lengths, b) for b in plain)
    assert waste < 0.05 * waste_plain
    # longest batch first (an out-of-memory error shows at once)
    assert max(lengths[i] for i in bucketed[0]) == max(lengths)


def test_sampler_without_shuffle_is_fixed() -> None:
    lengths = lengths_of(100)
    s = BucketBatchSampler(lengths, 10, shuffle=False, mega_batch=5)
    first = list(s)
    s.set_epoch(3)
    assert list(s) == first
    assert first[0] == sorted(range(50), key=lambda i: -lengths[i])[:10]


@pytest.mark.parametrize("n", [96, 100, 101, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ranks_disjoint_and_equal(n: int, drop_last: bool) -> None:
    lengths, world, bs = lengths_of(n, seed=n), 3, 4
    if drop_last and n < bs * world:
        with pytest.raises(ValueError, match="no full batch"):
            BucketBatchSampler(lengths, bs, drop_last=drop_last, world_size=world)
        return
    per_rank = []
    for rank in range(world):
        s = BucketBatchSampler(
            lengths, bs, seed=5, drop_last=drop_last, rank=rank, world_size=world
        )
        s.set_epoch(2)
        batches = list(s)
        assert len(batches) == len(s)
        per_rank.append(batches)
    counts = {len(b) for b in per_rank}
    assert len(counts) == 1  # the same number of steps on every rank
    seen = [i for batches in per_rank for b in batches for i in b]
    total_batches = -(-n // bs)
    if drop_last:
        assert len(seen) == len(set(seen))  # no example twice
        assert all(len(b) == bs for batches in per_rank for b in batches)
    else:
        assert set(seen) == set(range(n))  # none lost
        if total_batches % world == 0:
            assert len(seen) == n  # disjoint when the batches divide evenly
    for k in range(len(per_rank[0])):  # rank batches differ at every step
        assert len({tuple(b[k]) for b in per_rank}) == world or n < bs * world


def test_sampler_resume_skips_batches_and_checks_arguments() -> None:
    lengths = lengths_of(200)
    s = BucketBatchSampler(lengths, 8, seed=9, rank=1, world_size=2)
    s.set_epoch(4)
    full = list(s)
    s.set_epoch(4, start=5)
    assert list(s) == full[5:] and len(s) == len(full) - 5
    with pytest.raises(ValueError, match="start=99"):
        s.set_epoch(4, start=99)
    with pytest.raises(ValueError, match="rank 2"):
        BucketBatchSampler(lengths, 8, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler(lengths, 0)
    with pytest.raises(ValueError, match="no examples"):
        BucketBatchSampler([], 4)


# ----------------------------------------------------------------------------- masked LM
def test_mask_tokens_statistics() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 260, (64, 512), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2  # cls, sep
    attn = torch.ones_like(ids)
    ids[:8, 400:], attn[:8, 400:] = 0, 0  # padding
    out, labels = mask_tokens(
        ids,
        mask_id=3,
        vocab_size=260,
        special_ids=[0, 1, 2, 3],
        attention_mask=attn,
        generator=torch.Generator().manual_seed(1),
    )
    chosen = labels != -100
    candidates = (attn == 1) & (ids >= 4)
    assert not (chosen & ~candidates).any()  # never specials or padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(out[~chosen], ids[~chosen])  # untouched elsewhere
    n = int(candidates.sum())
    frac = int(chosen.sum()) / n
    assert abs(frac - 0.15) < 4 * (0.15 * 0.85 / n) ** 0.5
    k = int(chosen.sum())
    masked = int((out[chosen] == 3).sum()) / k
    kept = int((out[chosen] == ids[chosen]).sum()) / k
    tol = 4 * (0.1 * 0.9 / k) ** 0.5
    assert abs(masked - 0.8) < 4 * (0.8 * 0.2 / k) ** 0.5
    assert abs(kept - (0.1 + 0.1 / 256)) < tol  # kept, plus random draws equal by chance
    swapped = chosen & (out != 3) & (out != ids)
    assert (out[swapped] >= 4).all()  # random replacements are never special
    again, labels2 = mask_tokens(
        ids,
        mask_id=3,
        vocab_size=260,
        special_ids=[0, 1, 2, 3],
        attention_mask=attn,
        generator=torch.Generator().manual_seed(1),
    )
    assert torch.equal(again, out) and torch.equal(labels2, labels)


def test_mask_tokens_never_empty_and_checks_probability() -> None:
    ids = torch.tensor([[1, 10, 2]])
    for seed in range(20):
        _, labels = mask_tokens(
            ids,
            mask_id=3,
            vocab_size=260,
            special_ids=[0, 1, 2, 3],
            probability=0.01,
            generator=torch.Generator().manual_seed(seed),
        )
        assert labels.tolist() == [[-100, 10, -100]]
    with pytest.raises(ValueError, match="probability"):
        mask_tokens(ids, mask_id=3, vocab_size=260, special_ids=[0], probability=1.0)


def test_mlm_collator_pads_masks_and_resumes() -> None:
    tok = ByteTokenizer()
    feats = [
        {"input_ids": [1, *tok.encode("hello world, a long sequence"), 2]},
        {"input_ids": [1, *tok.encode("hi"), 2]},
    ]
    coll = MaskedLMCollator(tok, pad_to_multiple_of=16, probability=0.5, seed=4)
    first = coll(feats)
    assert first["input_ids"].shape == (2, 32)
    assert (first["labels"][first["attention_mask"] == 0] == -100).all()
    assert (first["labels"][:, 0] == -100).all()  # cls never a target
    state = coll.state_dict()
    second = coll(feats)
    coll.load_state_dict(state)
    assert torch.equal(coll(feats)["input_ids"], second["input_ids"])  # exact resume
    fresh = MaskedLMCollator(tok, pad_to_multiple_of=16, probability=0.5, seed=4)
    assert torch.equal(fresh(feats)["labels"], first["labels"])
    assert not torch.equal(fresh(feats)["labels"], first["labels"])  # the generator advances


def test_mlm_collator_in_workers_is_reproducible() -> None:
    tok = ByteTokenizer()
    data = [{"input_ids": [1, *tok.encode(f"example number {i} " * 4), 2]} for i in range(8)]

    def run() -> list[torch.Tensor]:
        torch.manual_seed(123)
        loader = torch.utils.data.DataLoader(
            data, batch_size=2, num_workers=2, collate_fn=MaskedLMCollator(tok, seed=1)
        )
        return [b["labels"] for b in loader]

    a, b = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    # the two workers do not repeat each other's masks
    assert not torch.equal(a[0] != -100, a[1] != -100)
