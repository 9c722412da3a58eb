"""Checkpoints that resume exactly, and that never unpickle anything.

A checkpoint folder holds the model as `save_pretrained` writes it (config.json,
model.safetensors, the tokenizer's files) and the trainer's state in two files:

    trainer_state.safetensors   every tensor: optimiser moments and step counts, the torch
                                (and CUDA) RNG states, numpy's Mersenne-Twister key
    trainer_state.json          everything else: step, data position (epoch, batch index),
                                optimiser param groups, scheduler and GradScaler state,
                                python's RNG state, best metric, history

Both formats hold data only (safetensors: raw tensors; JSON: numbers and strings), so
loading a checkpoint runs no code. A folder is written under a temporary name and renamed
into place, so an interruption while saving leaves the previous checkpoint intact.

RNG states are per process: under data parallel each rank's are gathered to rank 0 and
saved side by side (rank r's torch state as `rng.r.torch`), and a resumed rank restores its own.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"


# ----------------------------------------------------------------------------- RNG
def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) of this process's torch, CUDA, numpy and python RNG states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(cached)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = meta["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ----------------------------------------------------------------------------- state
def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in state["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, idx, name = key.split(".", 2)
            # AdamW keeps `step` on the CPU (unless fused/capturable); the moments on the device.
            state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
    for idx, slots in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(slots)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    directory: str | Path,
    *,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    state: dict[str, Any],
    rng: list[tuple[dict[str, torch.Tensor], dict[str, Any]]],
) -> Path:
    """Write the checkpoint folder (atomically replacing an older one). `rng` has one entry
    per rank (see `capture_rng`)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, tokenizer=tokenizer)
    tensors, optim_meta = _split_optimizer(optimizer.state_dict())
    rng_meta = []
    for rank, (rng_tensors, meta) in enumerate(rng):
        tensors.update({f"rng.{rank}.{k}": v.contiguous() for k, v in rng_tensors.items()})
        rng_meta.append(meta)
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = {
        "format": "longseq-trainer-state/1",
        **state,
        "optimizer": optim_meta,
        "scheduler": sched,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_meta,
    }
    save_file(tensors, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    old = final.with_name(final.name + ".old")
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def read_checkpoint(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, json) of a checkpoint's trainer state, with clear errors."""
    d = Path(directory)
    files = [d / STATE_JSON, d / STATE_TENSORS]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{d} is not a trainer checkpoint: missing {', '.join(missing)}")
    try:
        meta = json.loads(files[0].read_text())
        tensors = load_file(str(files[1]))
    except (json.JSONDecodeError, OSError, ValueError) as e:
        raise ValueError(f"{d}: unreadable trainer state ({e})") from None
    if meta.get("format") != "longseq-trainer-state/1":
        raise ValueError(f"{d}/{STATE_JSON}: unknown format {meta.get('format')!r}")
    return tensors, meta


def load_checkpoint(
    directory: str | Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rank: int,
    world_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Restore model, optimiser, scheduler, scaler and this rank's RNG; return the state.

    RNG states are restored only when the world size is the one that saved them (a resume
    on another number of processes continues, but not bit for bit)."""
    from longseq.models import WEIGHTS_NAME

    d = Path(directory)
    tensors, meta = read_checkpoint(d)
    model.load_weights(d / WEIGHTS_NAME)
    optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"], device))
    scheduler.load_state_dict(
        {**meta["scheduler"], "lr_lambdas": [None] * len(optimizer.param_groups)}
    )
    if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    rng = meta["rng"]
    meta["rng_restored"] = len(rng) == world_size
    if meta["rng_restored"]:
        prefix = f"rng.{rank}."
        mine = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        restore_rng(mine, rng[rank])
    return meta


__all__ = [
    "STATE_JSON",
    "STATE_TENSORS",
    "capture_rng",
    "load_checkpoint",
    "read_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
