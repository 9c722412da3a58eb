"""No sparse path builds an n x n tensor: every op's output, forward and backward, is watched."""

from __future__ import annotations

import pytest
import torch
from reference import dense_attention
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from longseq import attention

N = 2048


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


SPARSE = {
    "longformer": {"window": 64},
    "bigbird": {"block_size": 16, "num_random_blocks": 2},
    "linformer": {"k": 32, "max_seq_len": N},
    "lsh": {"chunk_length": 32, "n_hashes": 2, "num_buckets": 32},
    "local": {"chunk_length": 64, "num_chunks_after": 1},
    # Hugging Face's rules (longseq.convert.hf_attention): block 0 repeated, wrap-arounds
    "bigbird-hf": {"block_size": 16, "num_random_blocks": 2},
    "lsh-hf": {"chunk_length": 32, "n_hashes": 2, "num_buckets": 32},
    "local-hf": {"chunk_length": 64, "num_chunks_after": 1},
}


@pytest.mark.parametrize("name", list(SPARSE))
def test_sparse_layer_never_builds_n_by_n(name):
    layer = attention.build(name, 32, 2, **SPARSE[name])
    x = torch.randn(1, N, 32, requires_grad=True)
    mask = torch.ones(1, N, dtype=torch.long)
    mask[:, -100:] = 0
    glob = None
    if name == "longformer":
        glob = torch.zeros(1, N, dtype=torch.long)
        glob[:, 0] = 1
    with LargestTensor() as watch:
        layer(x, attention_mask=mask, global_attention_mask=glob).sum().backward()
    assert watch.largest < N * N // 4, f"{name}: a tensor of {watch.largest} elements"


def test_the_watch_sees_a_dense_score_matrix():
    q = torch.randn(1, 1, N, 8)
    with LargestTensor() as watch:
        dense_attention(q, q, q, torch.ones(1, 1, 1, N, dtype=torch.bool))
    assert watch.largest >= N * N
