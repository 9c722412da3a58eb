"""Whole models under sequence parallelism (gloo, forked processes): with each rank holding a
shard of every sequence, the loss is the single process's on every rank, per-token logits are
the single process's on the shard, and the parameter gradients averaged over the ranks (as
DDP averages them) are the single process's (fp64, 1e-10)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longseq.attention.shard import Shard
from longseq.models import ModelConfig, build_model

BASE = {
    "hidden_size": 16,
    "num_heads": 2,
    "num_layers": 2,
    "intermediate_size": 32,
    "max_length": 64,
    "init_std": 0.3,
    "dropout": 0.0,
}
CASES = [
    ("sequence-classification", {"num_labels": 3}),  # full attention, mean pooling
    (
        "sequence-classification",
        {
            "num_labels": 3,
            "pooling": "cls",
            "position": "rotary",
            "attention": "bigbird",
            "attention_options": {"block_size": 4, "num_random_blocks": 1},
        },
    ),
    (
        "token-classification",
        {"num_labels": 4, "attention": "local", "attention_options": {"chunk_length": 4}},
    ),
    ("masked-lm", {"attention": "linformer", "attention_options": {"k": 8}}),
    # the first token global (Longformer's classification set-up), on rank 0 only
    (
        "sequence-classification",
        {"num_labels": 3, "attention": "longformer", "attention_options": {"window": 4}},
    ),
    (  # the README's example: a global first token with rotary positions
        "sequence-classification",
        {
            "num_labels": 3,
            "attention": "longformer",
            "attention_options": {"window": 4},
            "position": "rotary",
        },
    ),
    (
        "causal-lm",
        {"attention": "longformer", "attention_options": {"window": 4}, "position": "rotary"},
    ),
    ("causal-lm", {"attention": "bigbird", "attention_options": {"block_size": 4}}),
    ("causal-lm", {"reversible": True}),
    ("question-answering", {"attention": "longformer", "attention_options": {"window": 4}}),
]


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


def _worker(rank: int, world: int, m: int) -> None:
    n = world * m
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(4, 200, (2, n), generator=g)
    mask = torch.ones(2, n, dtype=torch.long)
    mask[1, n - m - 3 :] = 0  # row 1: its last shard is padding only
    sl = slice(rank * m, (rank + 1) * m)
    for arch, opts in CASES:
        model = build_model(ModelConfig(architecture=arch, **{**BASE, **opts}), seed=0)
        model = model.double()
        per_token = arch != "sequence-classification"
        labels = ids.clone() if per_token else torch.tensor([0, 2])
        if arch == "token-classification":
            labels = ids % 4
        if per_token and arch != "causal-lm":
            labels = labels.masked_fill(mask == 0, -100)
        if arch == "question-answering":  # spans on other ranks than the question
            spans = {
                "start_positions": torch.tensor([n - 5, m + 1]),
                "end_positions": torch.tensor([n - 2, m + 3]),
            }
            full = model(ids, attention_mask=mask, **spans)
        else:
            full = model(ids, attention_mask=mask, labels=labels)
        full.loss.backward()
        want = _grads(model)
        model.zero_grad()
        if arch == "question-answering":
            out = model(ids[:, sl], attention_mask=mask[:, sl], **spans, shard=Shard(m))
        else:
            local_labels = labels[:, sl] if per_token else labels
            out = model(ids[:, sl], attention_mask=mask[:, sl], labels=local_labels, shard=Shard(m))
        want_logits = full.logits[:, sl] if per_token else full.logits
        torch.testing.assert_close(out.logits, want_logits, rtol=1e-10, atol=1e-10, msg=arch)
        torch.testing.assert_close(out.loss, full.loss, rtol=1e-10, atol=1e-10, msg=arch)
        out.loss.backward()
        for got, ref in zip(_grads(model), want, strict=True):
            dist.all_reduce(got)
            torch.testing.assert_close(got / world, ref, rtol=1e-9, atol=1e-10, msg=arch)


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_models_equal_one_process(world, run_on_processes):
    run_on_processes(_worker, world, 8)
