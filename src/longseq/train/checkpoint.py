"""Checkpoints that resume exactly, and that never unpickle anything.

A checkpoint folder holds the model as `save_pretrained` writes it (config.json,
model.safetensors, the tokenizer's files) and the trainer's state in two files:

    trainer_state.safetensors   every tensor: optimiser moments and step counts, the torch
                                (and CUDA) RNG states, numpy's Mersenne-Twister key
    trainer_state.json          everything else: step, data position (epoch, batch index),
                                optimiser param groups, scheduler and GradScaler state,
                                python's RNG state, best metric, history

Both formats hold data only (safetensors: raw tensors; JSON: numbers and strings), so
loading a checkpoint runs no code.

Crash safety. `save_checkpoint(DIR)` writes DIR.tmp, with `trainer_state.json` last: it lists
every other file's size, so a folder whose JSON reads back and whose files have those sizes
is complete (`verify`: the tensors' header is parsed, their bytes are read on load). Every
file and the folder are fsynced; then DIR -> DIR.old, DIR.tmp -> DIR, DIR.old removed, the
parent folder fsynced after each rename. A crash at any
point leaves at least one complete checkpoint among DIR, DIR.tmp and DIR.old, and `recover`
puts the newest complete one back at DIR (an incomplete DIR is kept aside as DIR.broken,
never deleted). Tests crash the save before and after each of its file operations.

RNG states are per process: under data parallel each rank's are gathered to rank 0 and
saved side by side (rank r's torch state as `rng.r.torch`), and a resumed rank restores its own.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from longseq.models import WEIGHTS_NAME

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
SUFFIXES = ("", ".tmp", ".old")  # the folders a save can leave: DIR, DIR.tmp, DIR.old

# Called with the name of each file operation of a save, before ("before:NAME") and after
# ("after:NAME"); the fault-injection tests raise from it. None in normal use.
fault_hook: Callable[[str], None] | None = None


def _op(name: str, fn: Callable[[], Any]) -> Any:
    if fault_hook is not None:
        fault_hook(f"before:{name}")
    out = fn()
    if fault_hook is not None:
        fault_hook(f"after:{name}")
    return out


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    for f in sorted(folder.iterdir()):
        if f.is_file():
            _fsync(f)
    _fsync(folder)


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
    if tmp.exists():  # a save interrupted earlier; `recover` has already looked at it
        _op("remove tmp", lambda: shutil.rmtree(tmp))
    _op("write model", lambda: model.save_pretrained(tmp, tokenizer=tokenizer))
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
    _op("write state", lambda: save_file(tensors, str(tmp / STATE_TENSORS)))
    # the JSON comes last and lists the other files' sizes: it makes the folder complete
    meta["files"] = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
    _op("write json", lambda: (tmp / STATE_JSON).write_text(json.dumps(meta, indent=1) + "\n"))
    _op("fsync tmp", lambda: _fsync_folder(tmp))
    old = final.with_name(final.name + ".old")
    parent = final.parent
    if final.exists():
        if old.exists():  # from a crash; `final` is complete and newer (see `recover`)
            _op("remove old", lambda: shutil.rmtree(old))
        _op("rename last to old", lambda: final.rename(old))
        _op("fsync parent", lambda: _fsync(parent))
    _op("rename tmp to last", lambda: tmp.rename(final))
    _op("fsync parent again", lambda: _fsync(parent))
    if old.exists():
        _op("remove old again", lambda: shutil.rmtree(old))
    return final


def verify(directory: str | Path) -> int | None:
    """The step of a complete checkpoint folder, or None (missing, cut short, unreadable)."""
    d = Path(directory)
    try:
        meta = json.loads((d / STATE_JSON).read_text())
        files = meta.get("files")
        if meta.get("format") != "longseq-trainer-state/1" or not isinstance(files, dict):
            return None
        for name, size in files.items():
            if (d / name).stat().st_size != size:
                return None
        # the header parses (the sizes above already show no file was cut short); the tensors
        # are read once, by load_checkpoint
        with safe_open(str(d / STATE_TENSORS), framework="pt") as f:
            f.keys()
        return int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None


def recover(directory: str | Path, log: Callable[[str], None] = print) -> int | None:
    """Put the newest complete checkpoint among DIR, DIR.tmp and DIR.old at DIR; return its
    step (None: there is none). Nothing complete is deleted: an incomplete DIR is renamed to
    DIR.broken; leftovers older than the chosen one stay until the next save replaces them."""
    final = Path(directory)
    found = []
    for suffix in SUFFIXES:
        path = final.with_name(final.name + suffix)
        step = verify(path) if path.is_dir() else None
        if step is not None:
            found.append((step, -SUFFIXES.index(suffix), path))
    if not found:
        return None
    step, _, best = max(found)  # newest step; on a tie DIR, then DIR.tmp
    if best != final:
        if final.exists():
            broken = final.with_name(f"{final.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            final.rename(broken)
            log(f"resume: {final} is incomplete; kept as {broken}")
        best.rename(final)
        _fsync(final.parent)
        log(f"resume: the newest complete checkpoint was {best.name} (step {step}); now {final}")
    return step


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
    "recover",
    "restore_rng",
    "save_checkpoint",
    "verify",
]
