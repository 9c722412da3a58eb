"""Sequence parallelism (gloo, 2 and 4 processes on the CPU): a layer run on each rank's shard
of the sequence gives, on every rank, the single-process layer's outputs and input gradients
of that shard, and its parameter gradients summed over the ranks equal the single process's
(fp64, 1e-10). Padding (at the end, at the start, and a shard of padding only), dilation,
causal layers (with attention sinks) and rotary positions included; LSH is refused with the
reason."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from longseq import attention
from longseq.attention.shard import Shard
from longseq.layers import RotaryEmbedding

HIDDEN, HEADS = 16, 2
CASES = [
    ("full", {}),
    ("full", {"causal": True}),
    ("full", {"rotary": True}),
    ("longformer", {"window": 4}),
    ("longformer", {"window": 6, "dilation": [1, 2]}),
    ("longformer", {"window": 4, "causal": True, "rotary": True}),
    ("longformer", {"window": 4, "globals": True}),
    ("longformer", {"window": 6, "dilation": [1, 2], "globals": True}),
    ("longformer", {"window": 4, "globals": True, "rotary": True}),
    ("longformer", {"window": 6, "dilation": [1, 2], "globals": True, "rotary": True}),
    # causal global tokens are sinks: every rank gets them, none sums a global row
    ("longformer", {"window": 4, "causal": True, "globals": True, "rotary": True}),
    (
        "longformer",
        {"window": 4, "causal": True, "global_tokens": 5, "rotary": True, "num_key_value_heads": 1},
    ),
    ("local", {"chunk_length": 4}),
    ("local", {"chunk_length": 4, "num_chunks_before": 1, "num_chunks_after": 1}),
    ("local", {"chunk_length": 4, "causal": True}),
    ("bigbird", {"block_size": 4, "num_random_blocks": 1, "num_global_blocks": 2}),
    ("bigbird", {"block_size": 2, "num_random_blocks": 2, "num_global_blocks": 1, "seed": 3}),
    ("bigbird", {"block_size": 4, "num_random_blocks": 1, "causal": True, "rotary": True}),
    (
        "bigbird",
        {"block_size": 4, "num_random_blocks": 1, "num_global_blocks": 1, "variant": "etc"},
    ),
    ("linformer", {"k": 5, "max_seq_len": 32}),
    ("linformer", {"k": 6, "max_seq_len": 32, "sharing": "headwise"}),
]


def _layer(name: str, opts: dict) -> torch.nn.Module:
    opts = dict(opts)
    rotary = opts.pop("rotary", False)
    opts.pop("globals", None)
    torch.manual_seed(0)
    layer = attention.build(name, HIDDEN, HEADS, **opts).double()
    if rotary:
        layer.rotary = RotaryEmbedding(HIDDEN // HEADS)
    return layer


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    return torch.zeros_like(p) if p.grad is None else p.grad.clone()


def _worker(rank: int, world: int, m: int) -> None:
    n = world * m
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, n, HIDDEN, generator=g, dtype=torch.float64)
    w = torch.randn(3, n, HIDDEN, generator=g, dtype=torch.float64)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, n - m - 2 :] = 0  # the last shard of row 1 is padding only
    mask[2, :3] = 0  # padding before the real tokens
    sl = slice(rank * m, (rank + 1) * m)
    glob = torch.zeros(3, n, dtype=torch.long)
    glob[:2, 1] = glob[2, 4] = 1  # on rank 0 (row 2 starts with padding)
    glob[0, n - 6] = glob[2, m + 1] = 1  # on other ranks
    for name, opts in CASES:
        layer = _layer(name, opts)
        g = glob if opts.get("globals") else None
        xf = x.clone().requires_grad_(True)
        full = layer(xf, attention_mask=mask, global_attention_mask=g)
        (full * w).sum().backward()
        want_params = [_grad(p) for p in layer.parameters()]
        layer.zero_grad()
        xs = x[:, sl].clone().requires_grad_(True)
        g_local = None if g is None else g[:, sl]
        out = layer(xs, attention_mask=mask[:, sl], global_attention_mask=g_local, shard=Shard(m))
        (out * w[:, sl]).sum().backward()
        torch.testing.assert_close(out, full[:, sl], rtol=1e-10, atol=1e-10, msg=name)
        torch.testing.assert_close(xs.grad, xf.grad[:, sl], rtol=1e-10, atol=1e-10)
        for p, want in zip(layer.parameters(), want_params, strict=True):
            got = _grad(p)
            dist.all_reduce(got)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    lsh = attention.build("lsh", HIDDEN, HEADS, chunk_length=4, num_buckets=4).double()
    with pytest.raises(ValueError, match="no exact sequence-parallel form"):
        lsh(x[:, sl], shard=Shard(m))


@pytest.mark.parametrize("world", [2, 4])
def test_sharded_layers_equal_the_single_process_layer(world, run_on_processes):
    run_on_processes(_worker, world, 8)
