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
- mechanisms that are not a fixed mask give their own bounds (`SelfAttention.reach_bound`):
  LSH: shared-QK hashing puts a key whose hashed vector equals the query's in the query's
  bucket with probability 1 in every round; whether the sorted chunks then put it in the
  query's window depends on how many other tokens share that bucket. Estimated by drawing
  the other tokens' buckets uniformly (`lsh_samples` draws per round) and counting, among
  draws where p and q share a bucket, those where `patterns.lsh_round` lets q see p; a query
  is reached if some round of some layer does. Content decides LSH, not distance, so a path
  through relays is not modelled (high = low);
  Linformer: the query sees k mixtures of the n positions (E K, F V with fixed learned E, F).
  A value can be read alone only from a mixture that singles out its position, and k fixed
  rows single out at most k of n positions: reach <= k/n for a pair at a random position
  (low = 0, high = k/n).

Every mechanism is asked through the registry; this module never tests a mechanism's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from longseq import attention


@dataclass
class Reach:
    low: Tensor  # (n, n) float: probability that query q reaches the pair at p (low bound)
    high: Tensor  # (n, n) float: ... (high bound)
    basis: str  # one line: how it was computed


def layers(
    mechanism: str, options: dict[str, Any], n: int, num_layers: int, num_heads: int
) -> list[Any]:
    """The model's attention layers for n-token sequences, as a model wires them (each layer
    its own options: BigBird's layer index, Linformer's length)."""
    cls = attention.get(mechanism)
    out = []
    for layer in range(num_layers):
        opts = cls.options_at(attention.At(n, layer=layer), options)
        out.append(attention.build(mechanism, 8 * num_heads, num_heads, **opts))
    return out


def layer_masks(
    mechanism: str, options: dict[str, Any], n: int, num_layers: int, num_heads: int
) -> list[Tensor] | None:
    """Per layer, (N, N) bool: pairs some head scores, from each layer's own `pattern` (BigBird
    ETC: N = its extra global tokens + n, those first). None: not a fixed mask (LSH,
    Linformer)."""
    try:
        return [m.pattern(n).any(0) for m in layers(mechanism, options, n, num_layers, num_heads)]
    except NotImplementedError:
        return None


def paths(masks: list[Tensor]) -> Tensor:
    """(N, N) bool: a path of at most len(masks) hops, hop l through masks[l] or staying put."""
    n = masks[0].shape[0]
    eye = torch.eye(n, dtype=torch.bool)
    reach = eye
    for m in masks:  # reach[r, p]: p's state has reached r; a hop moves it to q with m[q, r]
        reach = ((m | eye).float() @ reach.float()) > 0
    return reach


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
    """The reach of `mechanism` with `options` in an L-layer model on n-token sequences: from
    the masks of its layers, or (not a mask) from the layer's own `reach_bound`."""
    masks = layer_masks(mechanism, options, n, num_layers, num_heads)
    if masks is not None:
        offset = masks[0].shape[0] - n  # BigBird ETC: its extra global tokens come first
        one = torch.stack(masks).any(0)[offset:, offset:].float()
        many = paths(masks)[offset:, offset:].float()
        if bool((one == 1).all()):
            basis = "every pair in one hop"
        else:
            basis = f"masks of every layer and head (patterns.py); {num_layers}-hop paths"
        return Reach(one, many, basis)
    layer = layers(mechanism, options, n, 1, num_heads)[0]
    try:
        low, high, basis = layer.reach_bound(n, num_layers, samples=lsh_samples, seed=seed)
    except NotImplementedError:
        raise ValueError(f"no reach model for mechanism {mechanism!r}") from None
    return Reach(low, high, basis)


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


__all__ = ["Reach", "band", "layer_masks", "layers", "paths", "reach", "verdict"]
