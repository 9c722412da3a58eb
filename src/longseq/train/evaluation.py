"""One evaluation pass, shared by the trainer and `longseq evaluate`: the model's head
names its sums (`LongseqModel.evaluation`, `longseq.models.evaluation`), which this pass
feeds batch by batch, reduces over processes, and turns into metrics. Nothing here branches
on the architecture.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from longseq.models.evaluation import EvalSums

MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "global_attention_mask",
    "token_type_ids",
    "labels",
    "start_positions",
    "end_positions",
)


def model_inputs(
    model: nn.Module, batch: dict[str, Tensor], device: torch.device, non_blocking: bool = False
) -> dict[str, Tensor]:
    """The collated batch's model inputs, on `device`. QA data marks the question global;
    models without global tokens do without."""
    drop = () if getattr(model, "supports_global", False) else ("global_attention_mask",)
    return {
        k: v.to(device, non_blocking=non_blocking)
        for k, v in batch.items()
        if k in MODEL_INPUTS and k not in drop
    }


def sums_for(model: nn.Module, tokenizer: Any, device: torch.device) -> EvalSums:
    """The running sums of one evaluation pass of `model`: its head's `evaluation` class."""
    kind = getattr(type(model), "evaluation", None)
    if kind is None:
        raise ValueError(
            f"a {model.config.architecture!r} model has no evaluation (no task head); "
            "evaluate a model with a head (classification, LM, token labels, QA)"
        )
    return kind(model, tokenizer, device)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    *,
    tokenizer: Any,
    to_device: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    all_reduce: Callable[[Tensor], Any] | None = None,
) -> dict[str, Any]:
    """Metrics of `model` over `batches` (collated CPU batches), in eval mode (the model's
    mode is restored). `to_device` picks the model inputs and moves them."""
    return evaluation_pass(
        model, batches, tokenizer=tokenizer, to_device=to_device, autocast=autocast,
        all_reduce=all_reduce,
    ).result()  # fmt: skip


@torch.no_grad()
def evaluation_pass(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    *,
    tokenizer: Any,
    to_device: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    all_reduce: Callable[[Tensor], Any] | None = None,
) -> EvalSums:
    """`evaluate`'s pass, returning its sums (`result()` gives the metrics; a causal LM's
    also hold the loss by position, `positions`)."""
    was_training = model.training
    model.eval()
    try:
        ev = sums_for(model, tokenizer, next(model.parameters()).device)
        for cpu_batch in batches:
            with autocast():
                ev.add(to_device(cpu_batch), cpu_batch)
        if all_reduce is not None:
            ev.reduce(all_reduce)
        return ev
    finally:
        model.train(was_training)


__all__ = ["MODEL_INPUTS", "evaluate", "evaluation_pass", "model_inputs", "sums_for"]
