"""Reversible residual blocks (RevNet, as used by Reformer).

The hidden stream is split into two halves (x1, x2) and each block computes

    y1 = x1 + F(x2)          (F: attention, receives the extra keyword arguments)
    y2 = x2 + G(y1)          (G: feed-forward)

The inputs are recoverable from the outputs:

    x2 = y2 - G(y1)
    x1 = y1 - F(x2)

so the forward pass keeps no per-block activations: only the final (y1, y2). The backward pass
walks the blocks in reverse, reconstructs each block's inputs and recomputes F and G under
autograd to get the gradients. Activation memory is therefore O(1) in the number of blocks
(plus one block's recomputation), at the price of roughly one extra forward per block.

Dropout inside F and G must draw the same masks in the recomputation as in the forward: each
call records the RNG state (CPU, and CUDA for CUDA inputs) before running and replays it in
backward inside `torch.random.fork_rng`, so the global RNG stream is left untouched (this is
reformer-pytorch's `Deterministic` wrapper). Each call also records which autocast (bf16,
fp16) was on, and the replay runs under it: the backward pass runs outside the training
step's autocast block, and a replay in another precision would reconstruct other numbers.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn


class _Replayable:
    """Runs a module while recording the RNG state, and replays it later with the same state."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.cpu_state: Tensor | None = None
        self.cuda_devices: list[int] = []
        self.cuda_states: list[Tensor] = []
        self.autocast: list[tuple[str, torch.dtype]] = []

    def record(self, x: Tensor, **kwargs: Any) -> Tensor:
        # autocast (bf16/fp16) too: the replay must compute the very numbers the forward did,
        # or the inputs it reconstructs and the gradients drift
        self.autocast = [
            (d, torch.get_autocast_dtype(d))
            for d in ("cpu", "cuda")
            if torch.is_autocast_enabled(d)
        ]
        self.cpu_state = torch.get_rng_state()
        if x.is_cuda:
            self.cuda_devices = [x.device.index if x.device.index is not None else 0]
            self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]
        return self.module(x, **kwargs)

    def replay(self, x: Tensor, **kwargs: Any) -> Tensor:
        assert self.cpu_state is not None, "replay() before record()"
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.random.fork_rng(devices=self.cuda_devices))
            for device, dtype in self.autocast:
                stack.enter_context(torch.autocast(device, dtype=dtype))
            torch.set_rng_state(self.cpu_state)
            for d, s in zip(self.cuda_devices, self.cuda_states, strict=True):
                torch.cuda.set_rng_state(s, d)
            return self.module(x, **kwargs)


def _params(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


class _ReversibleFunction(torch.autograd.Function):
    """Forward without saving activations; backward reconstructs inputs block by block."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x1: Tensor,
        x2: Tensor,
        seq: ReversibleSequence,
        kwargs: dict[str, Any],
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        runs = [(_Replayable(f), _Replayable(g)) for f, g in seq.blocks_as_pairs()]
        for f, g in runs:  # runs under no_grad: nothing is kept for autograd
            x1 = x1 + f.record(x2, **kwargs)
            x2 = x2 + g.record(x1)
        ctx.runs = runs
        ctx.kwargs = kwargs
        ctx.params = params
        ctx.save_for_backward(x1, x2)
        return x1, x2

    @staticmethod
    def backward(ctx: Any, dy1: Tensor, dy2: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        y1, y2 = ctx.saved_tensors
        index = {id(p): i for i, p in enumerate(ctx.params)}
        grads: list[Tensor | None] = [None] * len(ctx.params)

        def accumulate(ps: list[nn.Parameter], gs: tuple[Tensor | None, ...]) -> None:
            for p, gp in zip(ps, gs, strict=True):
                if gp is None:
                    continue
                i = index[id(p)]
                grads[i] = gp if grads[i] is None else grads[i] + gp

        for f, g in reversed(ctx.runs):
            # G: x2 = y2 - G(y1); dy1 picks up G's input gradient.
            with torch.enable_grad():
                y1_ = y1.detach().requires_grad_(True)
                gy = g.replay(y1_)
                g_params = _params(g.module)
                d = torch.autograd.grad(gy, (y1_, *g_params), dy2, allow_unused=True)
            x2 = (y2 - gy).detach()
            dy1 = dy1 + d[0]
            accumulate(g_params, d[1:])
            del gy, y1_
            # F: x1 = y1 - F(x2); dx2 = dy2 + F's input gradient, dx1 = dy1.
            with torch.enable_grad():
                x2_ = x2.detach().requires_grad_(True)
                fx = f.replay(x2_, **ctx.kwargs)
                f_params = _params(f.module)
                d = torch.autograd.grad(fx, (x2_, *f_params), dy1, allow_unused=True)
            x1 = (y1 - fx).detach()
            dy2 = dy2 + d[0]
            accumulate(f_params, d[1:])
            del fx, x2_
            y1, y2 = x1, x2
        ctx.runs = None  # drop the RNG states
        return (dy1, dy2, None, None, *grads)


class ReversibleSequence(nn.Module):
    """A stack of reversible blocks `[(F, G), ...]` with O(1) activation memory in depth.

    `forward(x1, x2, **kwargs) -> (y1, y2)`: x1, x2 are the two halves of the hidden stream,
    each (batch, seq, hidden); `kwargs` (e.g. `attention_mask`) go to every F. Callers usually
    start from x1 = x2 = embeddings and end with (y1 + y2) / 2 or concatenation, as Reformer.
    `reversible=False` runs the same formulas with plain autograd (for debugging/testing).
    """

    def __init__(self, blocks: list[tuple[nn.Module, nn.Module]], *, reversible: bool = True):
        super().__init__()
        if not blocks:
            raise ValueError("ReversibleSequence needs at least one (F, G) block")
        for i, b in enumerate(blocks):
            if len(b) != 2:
                raise ValueError(f"block {i} must be an (F, G) pair, got {len(b)} modules")
        self.f = nn.ModuleList(f for f, _ in blocks)
        self.g = nn.ModuleList(g for _, g in blocks)
        self.reversible = reversible

    def blocks_as_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return list(zip(self.f, self.g, strict=True))

    def forward(self, x1: Tensor, x2: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {x1.shape} and {x2.shape}")
        if not self.reversible:
            for f, g in self.blocks_as_pairs():
                x1 = x1 + f(x2, **kwargs)
                x2 = x2 + g(x1)
            return x1, x2
        params = list(dict.fromkeys(_params(self)))  # unique, in order (shared weights once)
        return _ReversibleFunction.apply(x1, x2, self, kwargs, *params)


__all__ = ["ReversibleSequence"]
