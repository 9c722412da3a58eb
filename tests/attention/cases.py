"""Small configurations of every mechanism, shared by the invariant tests.

Each mechanism's own file registers the configurations that exercise its options; the
invariants (padding, batching, causality, determinism, gradcheck) then run on all of them.
Every mechanism with a grouped-query form has a case with `num_key_value_heads` (KV = 1 of
HEADS = 2), causal where it can be, so the cache and prefix invariants cover it; every one
with `global_tokens` has a causal case with them (attention sinks) and grouped-query heads.
"""

from __future__ import annotations

from typing import Any

HIDDEN, HEADS = 16, 2

# name -> list of option dicts (small sizes so fp64 gradcheck stays fast)
CASES: dict[str, list[dict[str, Any]]] = {
    "full": [
        {},
        {"causal": True},
        {"causal": True, "num_key_value_heads": 1},
        {"num_key_value_heads": 1},
    ],
    "longformer": [
        {"window": 4},
        {"window": 6, "dilation": [1, 2]},
        {"window": 4, "causal": True},
        {"window": 2, "dilation": 3, "bias": False},
        {"window": 4, "dilation": [1, 2], "causal": True, "num_key_value_heads": 1},
        {"window": 4, "num_key_value_heads": 1},
        {"window": 4, "global_tokens": 2},
        {"window": 2, "causal": True, "global_tokens": 3, "num_key_value_heads": 1},
        {"window": 4, "dilation": [1, 2], "causal": True, "global_tokens": 1},
    ],
    "bigbird": [
        {"block_size": 2, "num_random_blocks": 1, "num_global_blocks": 2, "seed": 3},
        {"block_size": 2, "num_random_blocks": 1, "num_global_blocks": 1, "causal": True},
        {"block_size": 3, "num_random_blocks": 1, "num_global_blocks": 1, "variant": "etc"},
        {
            "block_size": 2,
            "num_random_blocks": 1,
            "num_global_blocks": 1,
            "causal": True,
            "num_key_value_heads": 1,
        },
        {
            "block_size": 3,
            "num_random_blocks": 1,
            "num_global_blocks": 1,
            "variant": "etc",
            "causal": True,
            "num_key_value_heads": 1,
        },
    ],
    "linformer": [
        {"k": 5, "max_seq_len": 24},
        {"k": 12, "max_seq_len": 24, "sharing": "headwise"},
        {"k": 4, "max_seq_len": 24, "sharing": "kv"},
        {"k": 5, "max_seq_len": 24, "num_key_value_heads": 1},
    ],
    "lsh": [
        {"num_buckets": 4, "n_hashes": 2, "chunk_length": 4, "seed": 1},
        {"num_buckets": 4, "n_hashes": 1, "chunk_length": 4, "seed": 1, "causal": True},
        {"num_buckets": 6, "n_hashes": 3, "chunk_length": 3, "seed": 2, "causal": True},
    ],
    "local": [
        {"chunk_length": 4},
        {"chunk_length": 3, "num_chunks_before": 2, "num_chunks_after": 1, "bias": False},
        {"chunk_length": 4, "causal": True},
        {"chunk_length": 3, "num_chunks_before": 2, "causal": True, "num_key_value_heads": 1},
    ],
}


def all_cases() -> list[tuple[str, dict[str, Any]]]:
    return [(name, opts) for name, lst in CASES.items() for opts in lst]


def case_id(case: tuple[str, dict[str, Any]]) -> str:
    name, opts = case
    return name + "".join(f"-{k}={v}" for k, v in opts.items())
