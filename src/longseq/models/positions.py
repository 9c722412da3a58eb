"""A causal LM's loss by position: how well it predicts token t from the t tokens before it,
summed over documents, and bucketed by t (what `longseq evaluate` reports for a causal LM
and what the long-context compare task charts).

    nll, real = token_losses(model, input_ids)          # (B, N-1): -log p(x_t | x_<t), t >= 1
    sums = PositionSums(); sums.add(nll, real)           # per target position t
    rows = sums.buckets(bucket_edges(n, 1024))           # [{start, end, tokens, loss, ...}]

Target position t is the index of the predicted token (1 .. N-1); a bucket [a, b) holds the
targets a <= t < b. loss = summed NLL / tokens (nats per token), perplexity = exp(loss).

The logits are never held for the whole sequence: the body runs once and the LM head (49,152
columns for SmolLM2: 3 GiB of fp32 logits at 16K tokens) runs `head_chunk` positions at a
time.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.labels import IGNORE


@torch.no_grad()
def token_losses(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
    *,
    head_chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """(nll, real), both (B, N-1): the fp64 NLL of target t+1 given tokens <= t, and whether
    it counts (a real token, and a label other than IGNORE; 0 NLL where it does not). The
    targets are `labels` (default input_ids), shifted as `ForCausalLM` shifts them."""
    if getattr(model, "architecture", None) != "causal-lm":
        raise ValueError(
            f"loss by position needs a causal LM, got a {getattr(model, 'architecture', None)!r}"
            " model"
        )
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (batch, n >= 2), got {tuple(input_ids.shape)}")
    if head_chunk < 1:
        raise ValueError(f"head_chunk must be >= 1, got {head_chunk}")
    h, _, mask = model.encode(input_ids, attention_mask, None, None, False)
    n = input_ids.shape[1]
    targets = (input_ids if labels is None else labels)[:, 1:]
    real = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask[:, 1:].bool()
    real = real & (targets != IGNORE)
    targets = targets.masked_fill(~real, 0)
    parts = []
    for s in range(0, n - 1, head_chunk):
        e = min(s + head_chunk, n - 1)
        logits = model.lm_head(h[:, s:e]).float()
        parts.append(
            F.cross_entropy(logits.transpose(1, 2), targets[:, s:e], reduction="none").double()
        )
    nll = torch.cat(parts, 1).masked_fill(~real, 0.0)
    return nll, real


def bucket_edges(n: int, size: int) -> list[int]:
    """Edges 1, size, 2*size, ..., n of the target positions 1 .. n-1 of n-token inputs."""
    if size < 1 or n < 2:
        raise ValueError(f"bucket size must be >= 1 and n >= 2, got size={size}, n={n}")
    return sorted({1, *range(size, n, size), n})


def parse_edges(text: str) -> list[int]:
    """'0,1024,4096,8192' -> sorted distinct ints (a bucket is [edge_i, edge_i+1))."""
    try:
        edges = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ValueError(f"bucket edges must be comma-separated integers, got {text!r}") from None
    if len(edges) < 2 or edges[0] < 0:
        raise ValueError(f"need at least two non-negative bucket edges, got {text!r}")
    return edges


class PositionSums:
    """Summed NLL and token counts per target position, over every document added."""

    def __init__(self) -> None:
        self.loss = torch.zeros(0, dtype=torch.float64)
        self.count = torch.zeros(0, dtype=torch.float64)

    def add(self, nll: Tensor, real: Tensor) -> None:
        """Add `token_losses` output: (B, N-1), target position t = column + 1."""
        width = nll.shape[1] + 1
        if width > self.loss.numel():
            grow = width - self.loss.numel()
            self.loss = torch.cat([self.loss, self.loss.new_zeros(grow)])
            self.count = torch.cat([self.count, self.count.new_zeros(grow)])
        self.loss[1:width] += (nll.double() * real).sum(0).cpu()
        self.count[1:width] += real.double().sum(0).cpu()

    def buckets(self, edges: list[int]) -> list[dict[str, Any]]:
        """One row per bucket [edges[i], edges[i+1]) that holds targets."""
        rows = []
        for a, b in itertools.pairwise(edges):
            tokens = float(self.count[a:b].sum()) if a < self.count.numel() else 0.0
            if tokens == 0:
                continue
            loss = float(self.loss[a:b].sum()) / tokens
            rows.append(
                {
                    "start": a,
                    "end": b,
                    "tokens": int(tokens),
                    "loss": loss,
                    "perplexity": math.exp(loss),
                }
            )
        return rows

    def to_dict(self) -> dict[str, list[float]]:
        return {"loss": self.loss.tolist(), "count": self.count.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> PositionSums:
        out = cls()
        out.loss = torch.tensor(d["loss"], dtype=torch.float64)
        out.count = torch.tensor(d["count"], dtype=torch.float64)
        return out


def span_loss(rows: list[dict[str, Any]], start: int, end: int) -> float | None:
    """Token-weighted mean loss of the buckets inside [start, end) (None: none there)."""
    inside = [r for r in rows if r["start"] >= start and r["end"] <= end]
    tokens = sum(r["tokens"] for r in inside)
    return sum(r["loss"] * r["tokens"] for r in inside) / tokens if tokens else None


__all__ = [
    "PositionSums",
    "bucket_edges",
    "parse_edges",
    "span_loss",
    "token_losses",
]
