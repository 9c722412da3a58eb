"""Will a training run fit in memory? An estimate made before anything large is allocated.

A run too big for the machine used to grow until the kernel killed it, with no message
(`--set data.max_length=100000` on the genre example: 24 GB, exit 137). Now the trainer asks
`check` first and refuses such a run with the estimate, the limit and the settings to lower.

The estimate measures rather than models the mechanism's cost: the bytes autograd saves for
the backward pass during one forward of one sequence, at two short lengths. That is where a
mechanism's pattern shows (dense scores grow as n^2, a window's as n), whatever its kernel.
Those bytes are grown to the run's longest sequence (the growth exponent of the two points,
clamped to [1, 2]), times the sequences of a micro-batch, times BACKWARD (the gradients of the
activations that backward holds beside them), plus 12 bytes per trained parameter (its
gradient and AdamW's two moments). It is an estimate: real peaks also hold the allocator's
slack and a batch's own tensors, so a run is refused only when the estimate alone exceeds the
memory available.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass

import torch
from torch import nn

from longseq.bench.attention import extrapolate
from longseq.models.base import LongseqModel

# Peak of a training step / bytes its forward saves: backward holds the gradients of the
# activations beside them. Measured (growth of the resident set over one forward+backward,
# the genre example's model, CPU fp32): Longformer n=2048 and 8192 1.53 and 1.55, full
# n=1024 1.73, BigBird n=4096 1.32, Linformer n=1024 1.75; the largest is taken.
BACKWARD = 1.75
STATE_BYTES = 12  # per trained fp32 parameter: its gradient and AdamW's two moments
SHORT = 512  # the longer of the two measured lengths


@dataclass(frozen=True)
class Estimate:
    need: float  # bytes the step will add to what is allocated now
    available: float  # bytes free for it (this process's share)
    per_sequence: float  # saved activation bytes of one sequence of `length`
    length: int  # tokens of the longest sequence
    batch: int  # sequences per micro-batch and process

    @property
    def fits(self) -> bool:
        return self.need <= self.available


def saved_bytes(model: nn.Module, n: int, device: torch.device, autocast: ContextManager) -> int:
    """Bytes autograd saves for backward in one training-mode forward of one n-token sequence
    (weights excluded, each storage counted once). RNG untouched, nothing kept."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    devices = [device] if device.type == "cuda" else []
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with torch.random.fork_rng(devices=devices), autocast, hooks:
        ids = torch.randint(0, model.config.vocab_size, (1, n), device=device)
        # a head that makes tokens global by default gets the base rule's (the first token),
        # as a batch's mask gives them: a QA head with sep_token_id would otherwise look for
        # a question in random ids
        extra = {}
        if model.uses_cls_global and model.supports_global:
            extra["global_attention_mask"] = LongseqModel.default_global(model, ids)
        out = model(input_ids=ids, **extra)
    del out
    return sum(seen.values())


def available_bytes(device: torch.device) -> float:
    """Memory free for this process: the GPU's free memory, or MemAvailable shared by the
    processes of this host (inf when unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    free = float("inf")
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else -1
        free = pages * os.sysconf("SC_PAGE_SIZE") if pages > 0 else free
    return free / int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def estimate(
    model: nn.Module, length: int, batch: int, device: torch.device, autocast: ContextManager
) -> Estimate:
    """The training step's memory for `batch` sequences of `length` tokens (module doc)."""
    n2 = min(length, SHORT)
    n1 = max(1, n2 // 2)
    points = [(n, float(saved_bytes(model, n, device, autocast))) for n in (n1, n2)]
    per_sequence = points[1][1] if length == n2 else extrapolate(points, length) or 0.0
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    need = BACKWARD * batch * per_sequence + STATE_BYTES * trained
    return Estimate(need, available_bytes(device), per_sequence, length, batch)


def _size(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def refusal(est: Estimate, max_length: int, batch_size: int) -> str:
    """The error for a run that does not fit: the estimate, the limit, what to lower."""
    return (
        f"this run needs about {_size(est.need)} for a training step, more than the "
        f"{_size(est.available)} of memory available to it (an estimate, made before "
        f"allocating: {est.batch} sequence(s) of up to {est.length:,} tokens per micro-batch, "
        f"~{_size(BACKWARD * est.per_sequence)} each, measured on short ones and scaled, "
        f"plus gradients and optimiser state); lower data.max_length (now {max_length:,}) or "
        f"data.batch_size (now {batch_size}; raise optim.grad_accum to keep the batch)"
    )


__all__ = ["Estimate", "available_bytes", "estimate", "refusal", "saved_bytes"]
