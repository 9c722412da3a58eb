"""AdamW with decoupled weight decay on weight matrices only, and the learning-rate schedule.

Weight decay pulls a weight toward zero, which is a prior for matrices that mix features,
not for biases or for a LayerNorm's gain (decaying a gain toward 0 shrinks the layer's output
for no reason). So: no decay on any bias and on every parameter of a normalisation layer;
decay on everything else, embeddings and position tables included (as BERT and GPT-2 do).

The schedule is a factor f(s) on the peak `lr` for the update of optimiser step s = 0, 1, ...
(torch's LambdaLR calls f(0) before the first step, f(1) after it, ...):

    warm-up   s < W:  f = (s + 1) / W                     (reaches 1 at the last warm-up step)
    then      p = (s - W) / (max_steps - W)  in [0, 1)
              linear:   f = 1 - (1 - m) p
              cosine:   f = m + (1 - m) (1 + cos(pi p)) / 2
              constant: f = 1
with m = `min_lr_ratio`.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from longseq.train.config import OptimConfig

NORM_LAYERS: tuple[type[nn.Module], ...] = tuple(
    getattr(nn, name)
    for name in ("LayerNorm", "RMSNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d")
    if hasattr(nn, name)
)


def param_groups(model: nn.Module) -> tuple[list[str], list[str]]:
    """(names with weight decay, names without) of the trainable parameters, each tied
    parameter once, in the model's order."""
    decay, no_decay, seen = [], [], set()
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{name}" if module_name else name
            if name == "bias" or isinstance(module, NORM_LAYERS) or p.ndim < 2:
                no_decay.append(full)
            else:
                decay.append(full)
    return decay, no_decay


def build_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.AdamW:
    decay, no_decay = param_groups(model)
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in decay], "weight_decay": config.weight_decay},
        {"params": [params[n] for n in no_decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.lr,
        betas=tuple(config.betas),
        eps=config.eps,
    )


def lr_factor(
    step: int,
    *,
    warmup_steps: int,
    max_steps: int,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """The factor on the peak learning rate for optimiser step `step` (see the module)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}; valid: linear, cosine, constant")


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    factor = functools.partial(
        lr_factor,
        warmup_steps=config.warmup_steps,
        max_steps=config.max_steps,
        schedule=config.schedule,
        min_lr_ratio=config.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]
