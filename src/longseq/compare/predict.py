"""What each attention pattern lets a recall query reach, computed from `attention/patterns.py`.

A recall query at position q must read the value stored at its pair's position p < q. For a
trained model of L layers, each mechanism's pattern bounds which p a query can reach:

- one hop: some head of some layer scores (q, p) directly. One attention hop is what the task
  needs (full attention learns it), so a reachable pair is expected to be answered;
- a path of at most L hops: p -> r_1 -> ... -> q, where each hop is a pair that the pattern of
  successive layers scores (or a token keeping its own state through the residual stream).
  This is all that the pattern allows; relaying a value through intermediate tokens also needs
  them to carry it, so a model may stop short of it.

`Reach` holds, per (q, p), a low and a high reach probability; the predicted accuracy of a
query is chance + (1 - chance) * reach, a band from low to high:

- full: every pair in one hop (low = high = 1);
- Longformer, BigBird, local: low = one hop, high = the L-hop paths, from the exact masks of
  every layer and head (BigBird's random blocks are the layout the model itself uses: the
  same seed and layer index, so the prediction is for this model, not an average);
- LSH: shared-QK hashing puts a key whose hashed vector equals the query's in the query's
  bucket with probability 1 in every round; whether the sorted chunks then put it in the
  query's window depends on how many other tokens share that bucket. Estimated by drawing
  the other tokens' buckets uniformly (`lsh_samples` draws per round) and counting, among
  draws where p and q share a bucket, those where `patterns.lsh_round` lets q see p; a query
  is reached if some round of some layer does. Content decides LSH, not distance, so a path
  through relays is not modelled (high = low);
- Linformer: the query sees k mixtures of the n positions (E K, F V with fixed learned E, F).
  A value can be read alone only from a mixture that singles out its position, and k fixed
  rows single out at most k of n positions: reach <= k/n for a pair at a random position
  (low = 0, high = k/n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from longseq.attention import patterns


@dataclass
class Reach:
    low: Tensor  # (n, n) float: probability that query q reaches the pair at p (low bound)
    high: Tensor  # (n, n) float: ... (high bound)
    basis: str  # one line: how it was computed


def layer_masks(
    mechanism: str, options: dict[str, Any], n: int, num_layers: int, num_heads: int
) -> list[Tensor] | None:
    """Per layer, (n, n) bool: pairs some head scores. None: not a fixed mask (LSH, Linformer)."""
    if mechanism == "full":
        return [torch.ones(n, n, dtype=torch.bool)] * num_layers
    if mechanism == "longformer":
        m = patterns.longformer(
            n, options["window"], options.get("dilation", 1), num_heads=num_heads
        ).any(0)
        return [m] * num_layers
    if mechanism == "local":
        mod = patterns.chunked_local(
            options.get("chunk_length", 64),
            options.get("num_chunks_before", 1),
            options.get("num_chunks_after", 0),
        )
        return [patterns.materialize(mod, n)] * num_layers
    if mechanism == "bigbird":
        b = options.get("block_size", 64)
        g = options.get("num_global_blocks", 2)
        out = []  # ETC: (g b + n)^2, its extra global tokens first
        for layer in range(num_layers):
            m = patterns.bigbird(
                n,
                block_size=b,
                num_heads=num_heads,
                num_random_blocks=options.get("num_random_blocks", 3),
                num_global_blocks=g,
                num_sliding_blocks=options.get("num_sliding_blocks", 3),
                variant=options.get("variant", "itc"),
                seed=options.get("seed", 0),
                layer_idx=layer,
            ).any(0)
            out.append(m)
        return out
    return None


def paths(masks: list[Tensor]) -> Tensor:
    """(N, N) bool: a path of at most len(masks) hops, hop l through masks[l] or staying put."""
    n = masks[0].shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    reach = eye
    for m in masks:  # reach[r, p]: p's state has reached r; a hop moves it to q with m[q, r]
        reach = ((m | eye).float() @ reach.float()) > 0
    return reach


def lsh_reach(
    n: int, chunk: int, n_hashes: int, num_buckets: int, layers: int, samples: int, seed: int
) -> Tensor:
    """(n, n) float: probability that q sees p in some round of some layer when both hash
    alike (see the module docstring); the other tokens' buckets uniform."""
    gen = torch.Generator().manual_seed(seed)
    seen = torch.zeros(n, n)
    same = torch.zeros(n, n)
    for _ in range(samples):
        buckets = torch.randint(0, num_buckets, (n,), generator=gen)
        both = buckets[:, None] == buckets[None, :]
        seen += (patterns.materialize(patterns.lsh_round(buckets, chunk), n) & both).float()
        same += both.float()
    per_round = seen / same.clamp_min(1)
    return 1 - (1 - per_round) ** (n_hashes * layers)


def reach(
    mechanism: str,
    options: dict[str, Any],
    n: int,
    num_layers: int,
    num_heads: int,
    *,
    lsh_samples: int = 400,
    seed: int = 0,
) -> Reach:
    """The reach of `mechanism` with `options` in an L-layer model on n-token sequences."""
    masks = layer_masks(mechanism, options, n, num_layers, num_heads)
    if masks is not None:
        offset = masks[0].shape[0] - n  # BigBird ETC: its extra global tokens come first
        one = torch.stack(masks).any(0)[offset:, offset:].float()
        many = paths(masks)[offset:, offset:].float()
        if mechanism == "full":
            basis = "every pair in one hop"
        else:
            basis = f"masks of every layer and head (patterns.py); {num_layers}-hop paths"
        return Reach(one, many, basis)
    if mechanism == "lsh":
        from longseq.attention.lsh import derived_num_buckets

        chunk = options.get("chunk_length", 64)
        buckets = options.get("num_buckets") or derived_num_buckets(-(-n // chunk) * chunk, chunk)
        if isinstance(buckets, list):
            buckets = int(torch.tensor(buckets).prod())
        hashes = options.get("n_hashes", 1)
        r = lsh_reach(n, chunk, hashes, buckets, num_layers, lsh_samples, seed)
        basis = (
            f"identical shared-QK vectors share a bucket in every round; the sorted chunks of "
            f"{chunk} put them in one window (patterns.lsh_round, {buckets} buckets, other "
            f"tokens uniform, {lsh_samples} draws); {hashes} rounds x {num_layers} layers"
        )
        return Reach(r, r, basis)
    if mechanism == "linformer":
        k = min(options["k"], n)
        high = torch.full((n, n), min(1.0, k / n))
        return Reach(torch.zeros(n, n), high, f"rank k = {k}: at most k/n = {k}/{n} positions")
    raise ValueError(f"no reach model for mechanism {mechanism!r}")


def band(r: Reach, queries: list[tuple[int, int]], chance: float) -> tuple[float, float]:
    """Predicted accuracy (fractions) of the queries [(q, p), ...]: (low, high)."""
    if not queries:
        return float("nan"), float("nan")
    q = torch.tensor([a for a, _ in queries])
    p = torch.tensor([b for _, b in queries])
    low = float(r.low[q, p].mean())
    high = float(r.high[q, p].mean())
    return chance + (1 - chance) * low, chance + (1 - chance) * high


def verdict(measured: float, low: float, high: float, margin: float) -> str:
    """How a measured accuracy stands against the predicted band (all in the same units)."""
    if measured > high + margin:
        return "above the pattern's bound: the prediction is wrong"
    if measured < low - margin:
        return "below: reachable in one hop, not learned in this budget"
    if high - low > margin and measured < high - margin and measured > low + margin:
        return "agrees (inside the band)"
    if measured >= high - margin:
        return "agrees (at the upper end)"
    return "agrees (at the lower end)"


__all__ = ["Reach", "band", "layer_masks", "lsh_reach", "paths", "reach", "verdict"]
