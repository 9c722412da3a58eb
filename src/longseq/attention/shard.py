"""Sequence parallelism: one sequence split over processes, each holding a contiguous shard.

With W processes (a `torch.distributed` group: gloo on the CPU, NCCL on the GPU), rank r holds
positions [r m, (r + 1) m) of every sequence, m = N / W (the caller pads N to a multiple of W
times the mechanism's block). A layer called with `shard=Shard(group)` returns the output of
its own positions, equal to the single-process layer's output there; gradients flow back to
every rank that contributed an input. What a mechanism exchanges is what its pattern needs:

- a bounded window (Longformer, local attention): the h rows before and after the shard from
  the neighbours (a halo, sent point to point: its volume does not grow with W), h = the
  window's reach. The layer then runs its own kernel on
  [halo, shard, halo] with the positions of that stretch, and keeps the shard's rows: the
  pattern is a function of position differences only, so this is the same computation;
- keys anywhere (full attention, BigBird's random and global blocks): every rank's keys and
  values, all-gathered; each rank scores only its own queries;
- Linformer: E K and F V are sums over positions: each rank's partial sum, all-reduced.

Collectives with gradients: `gather` (backward: the all-reduced gradient, this rank's part),
`total` (an all-reduce, whose backward is an all-reduce), written here so they need only
all_gather and all_reduce (gloo has no reduce_scatter), and the halo's exchange with the two
neighbours (send/recv; backward: the gradients sent back the other way).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

# Bytes this process received through the collectives (forward and backward), for measuring
# the communication volume: an all_gather brings (W - 1) parts; an all-reduce moves
# 2 (W - 1) / W times its size per process (a ring's volume).
_TRAFFIC = [0]


def traffic() -> int:
    """Bytes received by this process since `reset_traffic()`."""
    return _TRAFFIC[0]


def reset_traffic() -> None:
    _TRAFFIC[0] = 0


def _count(x: Tensor, parts: float) -> None:
    _TRAFFIC[0] += int(x.numel() * x.element_size() * parts)


class _Gather(torch.autograd.Function):
    """x (this rank's part) -> (W, *x.shape): every rank's part, in rank order."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        world = dist.get_world_size(group)
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        _count(x, world - 1)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)  # every rank's use of every part
        world = dist.get_world_size(ctx.group)
        _count(grad, 2 * (world - 1) / world)
        return grad[dist.get_rank(ctx.group)], None


class _Total(torch.autograd.Function):
    """x -> the sum of x over the ranks (every rank gets it)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        out = x.contiguous().clone()
        dist.all_reduce(out, group=group)
        world = dist.get_world_size(group)
        _count(out, 2 * (world - 1) / world)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        world = dist.get_world_size(ctx.group)
        _count(grad, 2 * (world - 1) / world)
        return grad, None


def _swap(
    to_prev: Tensor, to_next: Tensor, from_prev: Tensor, from_next: Tensor, group: Any
) -> None:
    """Send to the neighbouring ranks and receive from them, in one batch (no rank waits on
    another's send order). What goes to the previous rank has the shape of what comes from
    the next one on every rank, so empty parts (a causal halo's right side) are skipped on
    both ends; so is a missing neighbour."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    ops = []
    for peer, send, recv in ((rank - 1, to_prev, from_prev), (rank + 1, to_next, from_next)):
        if not 0 <= peer < world:
            continue
        peer = dist.get_global_rank(group, peer) if group is not None else peer
        if send.numel():
            ops.append(dist.P2POp(dist.isend, send.contiguous(), peer, group))
        if recv.numel():
            ops.append(dist.P2POp(dist.irecv, recv, peer, group))
            _count(recv, 1)
    for req in dist.batch_isend_irecv(ops) if ops else []:
        req.wait()


class _Neighbours(torch.autograd.Function):
    """(head, tail) of this rank's shard -> (the previous rank's tail, the next rank's head);
    zeros where there is no neighbour. Backward: each received part's gradient goes back to
    the rank that sent it, where it adds to that rank's own tail or head."""

    @staticmethod
    def forward(ctx: Any, head: Tensor, tail: Tensor, group: Any) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        ctx.group = group
        prev_tail = tail.new_zeros(tail.shape)  # contiguous, as a receive buffer must be
        next_head = head.new_zeros(head.shape)
        _swap(head, tail, prev_tail, next_head, group)
        return prev_tail, next_head

    @staticmethod
    def backward(ctx: Any, g_prev: Tensor, g_next: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        g_head, g_tail = g_next.new_zeros(g_next.shape), g_prev.new_zeros(g_prev.shape)
        # the previous rank used my head as its next_head: its gradient comes from there
        _swap(g_prev, g_next, g_head, g_tail, ctx.group)
        return g_head, g_tail, None


class Shard:
    """This process's part of a sequence split over `group` (default: the whole world).

    `length`: tokens per shard (every rank the same). Positions of this shard: `start` ..
    `start + length - 1` of `total`."""

    def __init__(self, length: int, group: Any = None) -> None:
        if not dist.is_initialized():
            raise ValueError("sequence parallelism needs torch.distributed (run under torchrun)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.length = length
        self.start = self.rank * length
        self.total = self.world * length

    def gather(self, x: Tensor, dim: int) -> Tensor:
        """Every rank's x concatenated along `dim` (the whole sequence), with gradients."""
        parts = _Gather.apply(x, self.group)
        return torch.cat(parts.unbind(0), dim=dim)

    def total_sum(self, x: Tensor) -> Tensor:
        """The sum of x over the ranks, with gradients."""
        return _Total.apply(x, self.group)

    def maximum(self, x: Tensor) -> Tensor:
        """The elementwise maximum of x over the ranks (no gradient: a softmax's shift)."""
        out = x.detach().contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.group)
        return out

    def halo(self, x: Tensor, left: int, right: int, dim: int = 1) -> tuple[Tensor, Tensor]:
        """[the `left` positions before this shard, x, the `right` positions after it] along
        `dim`, and a (extended length,) bool: which of those positions exist (none before the
        first shard or after the last). Needs left, right <= length (one neighbour each)."""
        m = x.shape[dim]
        if left > m or right > m:
            raise ValueError(
                f"a shard of {m} tokens is shorter than the window's reach ({max(left, right)}): "
                "use fewer processes or longer sequences"
            )
        head, tail = x.narrow(dim, 0, right), x.narrow(dim, m - left, left)
        prev, nxt = _Neighbours.apply(head, tail, self.group)
        out = torch.cat([prev, x, nxt], dim)
        exists = torch.ones(left + m + right, dtype=torch.bool, device=x.device)
        if self.rank == 0:
            exists[:left] = False
        if self.rank == self.world - 1:
            exists[left + m :] = False
        return out, exists

    def halo_with_masks(
        self, x: Tensor, masks: list[Tensor], left: int, right: int
    ) -> tuple[Tensor, list[Tensor]]:
        """`halo` of hidden states x (B, m, E) and of (B, m) bool masks in one exchange (the
        masks travel as extra channels); the masks come back False where no position exists."""
        e = x.shape[-1]
        both = torch.cat([x, *(m.to(x.dtype).unsqueeze(-1) for m in masks)], -1)
        out, exists = self.halo(both, left, right)
        return out[..., :e], [(out[..., e + i] > 0) & exists for i in range(len(masks))]


__all__ = ["Shard", "reset_traffic", "traffic"]
