"""The training configuration: one YAML (or JSON) file with four sections.

    model:  a `longseq.models.ModelConfig` as a mapping (fields left out are filled from the
            data: vocab_size, num_labels, label_names, special ids, max_length, and the
            architecture the task needs), or `init_from: DIR` (a saved model) plus any fields
            to change, e.g. `architecture: sequence-classification` to fine-tune an MLM.
    data:   the task (a registered `longseq.tasks` name: classification, lm, mlm, listops,
            recall, qa, ...), the files, tokenizer, lengths.
    optim:  AdamW and its learning-rate schedule, clipping, accumulation.
    run:    seed, output folder, evaluation / logging / saving cadence, precision, device.

Every key is checked: an unknown key is an error that names the section and the valid keys
(with a close match when there is one), and values are converted to the field's type, so
YAML's `lr: 1e-3` (a string in YAML 1.1) is the number 0.001. `--set section.key=value`
overrides any key, nested ones too (`--set model.attention_options.window=64`).
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import math
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from longseq import tasks
from longseq.models import ModelConfig

SCHEDULES: tuple[str, ...] = ("linear", "cosine", "constant")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
# Metrics where lower is better; every other metric (accuracy, macro_f1) is maximised.
LOWER_IS_BETTER: tuple[str, ...] = ("loss", "perplexity", "bpb")


def _choose(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


@dataclass
class DataConfig:
    """Where the examples come from and how they are batched.

    `max_length` is the longest sequence in tokens: classification documents are cut to it,
    LM / MLM text is cut into blocks of exactly this many tokens. `batch_size` is the global
    batch of one forward pass (all processes together); an optimiser step sees
    `batch_size * optim.grad_accum` sequences.
    """

    task: str = "classification"
    train: str | list[str] | None = None
    val: str | list[str] | None = None
    test: str | list[str] | None = None
    tokenizer: str | None = None  # "byte" (the default), a tokenizer.json or a saved folder
    max_length: int = 512
    batch_size: int = 8
    eval_batch_size: int | None = None  # default: batch_size
    label_names: list[str] | str | None = None  # list, or a labels.json (default: beside train)
    text_field: str = "text"
    label_field: str = "label"
    mlm_probability: float = 0.15
    random_offset: bool = True  # LM training: shift the block cut points every epoch
    mega_batch: int = 50  # length bucketing: sort groups of this many batches by length

    def validate(self) -> None:
        _choose("data.task", self.task, tasks.names())
        _positive("data.max_length", self.max_length)
        _positive("data.batch_size", self.batch_size)
        _positive("data.eval_batch_size", self.eval_batch_size, allow_none=True)
        _positive("data.mega_batch", self.mega_batch)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ValueError(f"data.mlm_probability must be in (0, 1), got {self.mlm_probability}")


@dataclass
class OptimConfig:
    """AdamW; the learning rate rises linearly over `warmup_steps`, then follows `schedule`
    down to `min_lr_ratio * lr` at `max_steps`. `grad_clip` <= 0 or null turns clipping off."""

    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "linear"
    min_lr_ratio: float = 0.0
    max_steps: int = 1000
    grad_clip: float | None = 1.0
    grad_accum: int = 1

    def validate(self) -> None:
        _choose("optim.schedule", self.schedule, SCHEDULES)
        _positive("optim.lr", self.lr)
        # AdamW applies lr / (1 - beta1^t) in float32: far larger rates overflow there
        if not math.isfinite(self.lr) or self.lr > 1e30:
            raise ValueError(f"optim.lr must be finite and at most 1e30, got {self.lr}")
        _positive("optim.max_steps", self.max_steps)
        _positive("optim.grad_accum", self.grad_accum)
        _positive("optim.eps", self.eps)
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"optim.betas must lie in [0, 1), got {list(self.betas)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(
                f"optim.warmup_steps={self.warmup_steps} must lie in 0..max_steps={self.max_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class RunConfig:
    """Seed, output folder, cadence (in optimiser steps), precision and device."""

    seed: int = 0
    out: str = "runs/default"
    eval_every: int = 200
    eval_batches: int | None = None  # evaluate on a fixed random subset of this many batches
    log_every: int = 10
    save_every: int | None = None  # the `last` checkpoint; default: eval_every
    patience: int | None = None  # early stopping: evaluations without improvement
    metric: str = "auto"  # what best/early stopping watch; auto: accuracy or loss
    precision: str = "fp32"
    device: str = "auto"
    num_workers: int = 0
    threads: int | None = None  # torch.set_num_threads (per process)
    progress: bool = True  # tqdm bar (only on a terminal)
    tensorboard: bool = True
    overwrite: bool = False  # start afresh in a folder that already holds a checkpoint
    # DDP: parameters that get no gradient (found by one probe step) are frozen, so DDP needs
    # no graph search per step; set true for models whose unused set changes between batches.
    find_unused_parameters: bool = False
    # split each sequence over this many processes (torchrun): sequence parallelism; the
    # world size must be a multiple (world = data parallel x sequence parallel)
    sequence_parallel: int = 1

    def validate(self) -> None:
        _choose("run.precision", self.precision, PRECISIONS)
        _choose("run.device", self.device, DEVICES)
        for name in ("eval_every", "log_every", "sequence_parallel"):
            _positive(f"run.{name}", getattr(self, name))
        for name in ("eval_batches", "save_every", "patience", "threads"):
            _positive(f"run.{name}", getattr(self, name), allow_none=True)
        if self.num_workers < 0:
            raise ValueError(f"run.num_workers must be >= 0, got {self.num_workers}")
        if not self.out:
            raise ValueError("run.out (the output folder) is empty")


SECTIONS: dict[str, type] = {"data": DataConfig, "optim": OptimConfig, "run": RunConfig}

# What a resumed run may change: cadence, length and where it runs. Anything else (the model,
# the data, the optimiser, the schedule, the seed, the batch) defines what a checkpoint's
# training is, and a resume that changes it is refused.
MAY_CHANGE_ON_RESUME: tuple[str, ...] = (
    "optim.max_steps",
    "data.eval_batch_size",
    "run.eval_every",
    "run.eval_batches",
    "run.log_every",
    "run.save_every",
    "run.patience",
    "run.progress",
    "run.tensorboard",
    "run.threads",
    "run.num_workers",
    "run.out",
    "run.overwrite",
    "run.sequence_parallel",  # the same computation, split otherwise
)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def resume_differences(saved: dict[str, Any], now: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(refused, allowed): the settings that differ between a checkpoint's training config
    and this run's, as 'key: old -> new' lines."""
    a, b = _flat(saved), _flat(now)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            ok = key in MAY_CHANGE_ON_RESUME
            (allowed if ok else refused).append(line)
    return refused, allowed


@dataclass
class TrainConfig:
    """The whole run. `model` is a ModelConfig mapping (or a `ModelConfig`), see the module."""

    model: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self.model = model_section(self.model)
        for name, cls in SECTIONS.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, _section(cls, value, name))
            elif not isinstance(value, cls):
                raise ValueError(f"{name} must be a {cls.__name__} or a mapping")
        self.validate()

    def validate(self) -> None:
        self.data.validate()
        self.optim.validate()
        self.run.validate()
        metric = self.run.metric
        reported = tasks.get(self.data.task).metrics
        if metric != "auto" and metric not in reported:
            raise ValueError(
                f"run.metric={metric!r} is not reported for task {self.data.task!r}; choose "
                f"auto or one of: {', '.join(reported)}"
            )

    @property
    def metric(self) -> str:
        """The evaluation metric that picks the best checkpoint and drives early stopping."""
        if self.run.metric != "auto":
            return self.run.metric
        return tasks.get(self.data.task).best_metric

    # ------------------------------------------------------------------------- I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a training config must be a mapping, got {type(data).__name__}")
        valid = ("model", *SECTIONS)
        _reject_unknown(data, valid, "the training config (top level)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = {"model": json.loads(json.dumps(self.model))}
        for name in SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def replace(self, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
        """A copy with `section.key=value` overrides applied (and validated again)."""
        raw = self.to_dict()
        for item in overrides:
            apply_override(raw, item)
        return TrainConfig.from_dict(raw)


def model_section(value: Any) -> dict[str, Any]:
    """The model section as a plain dict; a ModelConfig keeps only its non-default fields,
    so the data can still fill vocab_size, num_labels, label_names and max_length."""

    if isinstance(value, ModelConfig):
        default = ModelConfig()
        return {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(ModelConfig)
            if getattr(value, f.name) != getattr(default, f.name)
        }
    if not isinstance(value, dict):
        raise ValueError(
            f"model must be a mapping of ModelConfig fields (or init_from: DIR), got "
            f"{type(value).__name__}"
        )
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    _reject_unknown(value, (*sorted(names), "init_from"), "the model section")
    return dict(value)


def _reject_unknown(data: dict[str, Any], valid: tuple[str, ...], where: str) -> None:
    unknown = [k for k in data if k not in valid]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ValueError(
        f"unknown key(s) in {where}: {', '.join(hints)}; valid keys: {', '.join(valid)}"
    )


def _section(cls: type, data: dict[str, Any], name: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"section {name!r} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(data, tuple(fields), f"section {name!r}")
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(v, hints[k], f"{name}.{k}") for k, v in data.items()}
    return cls(**values)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` converted to the annotated type `tp`, or a ValueError naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if tp in (int, float):
        return _coerce_number(value, tp, where)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where} must be a string, got {value!r}")
    if origin in (list, tuple):
        return _coerce_sequence(value, tp, where)
    raise TypeError(f"{where}: no conversion to {tp}")  # a field type this module lacks


def _coerce_union(value: Any, tp: Any, where: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    # Exact type first: "str | list[str]" keeps a list as a list.
    for arg in sorted(args, key=lambda a: not _is_instance(value, a)):
        if arg is type(None):
            continue
        try:
            return _coerce(value, arg, where)
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}")


def _coerce_number(value: Any, tp: type, where: str) -> int | float:
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads 1e-3 as a string
        except ValueError:
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    if not isinstance(value, int | float):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if tp is int:
        if float(value) != int(value):
            raise ValueError(f"{where} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _coerce_sequence(value: Any, tp: Any, where: str) -> list[Any] | tuple[Any, ...]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if not isinstance(value, list | tuple):
        raise ValueError(f"{where} must be a list, got {value!r}")
    if origin is tuple:
        if len(value) != len(args):
            raise ValueError(f"{where} must have {len(args)} entries, got {list(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args, strict=True))
    return [_coerce(v, args[0], where) for v in value]


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp) or tp
    return isinstance(origin, type) and isinstance(value, origin)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply `section.key[.subkey]=value` to the raw mapping; the value is read as YAML."""
    key, sep, text = item.partition("=")
    path = key.strip().split(".")
    if not sep or not all(path) or len(path) < 2:
        raise ValueError(
            f"override {item!r} must look like section.key=value (e.g. optim.lr=1e-3, "
            "model.attention_options.window=64)"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"override {item!r}: the value is not valid YAML ({e})") from None
    node = raw
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {item!r}: {part!r} is not a mapping")
        node = child
    node[path[-1]] = value


def _strict_yaml(text: str, name: str) -> Any:
    """yaml.safe_load, but a key repeated in one mapping is an error (YAML keeps the last one
    silently, so `lr: 1e-3` ... `lr: 1` would train at 1). Errors name the file `name` and
    its line (a string alone would be `"<unicode string>"`)."""

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return loader.construct_mapping(node, deep=True)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    stream = io.StringIO(text)
    stream.name = name  # type: ignore[misc]  # what yaml's marks call the file
    try:
        return yaml.load(stream, Loader=Strict)
    except yaml.MarkedYAMLError as e:
        if "'\\t'" in str(e):
            e.note = "YAML indents with spaces, not tabs"
        raise


def _unique_json(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or JSON (.json) training config and apply `overrides`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training config at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".json":
            raw = json.loads(text, object_pairs_hook=_unique_json)
        else:
            raw = _strict_yaml(text, str(path))
    except (ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path} is not valid {path.suffix[1:].upper() or 'YAML'}: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training config is a mapping, got {type(raw).__name__}")
    file_only = json.loads(json.dumps(raw))  # before the overrides, for the blame below
    for item in overrides:
        apply_override(raw, item)
    try:
        return TrainConfig.from_dict(raw)
    except ValueError as e:
        raise ValueError(_blame(path, file_only, overrides, str(e))) from None


def _blame(path: Path, file_only: dict[str, Any], overrides: Sequence[str], err: str) -> str:
    """The error prefixed with its cause: the file when the file alone gives it, else the
    `--set` values (those whose key the message names, or all of them)."""
    if overrides:
        try:
            TrainConfig.from_dict(file_only)
        except ValueError as alone:
            if str(alone) == err:
                return f"{path}: {err}"
        keys = [re.escape(o.partition("=")[0].strip().split(".")[-1]) for o in overrides]
        named = [o for o, k in zip(overrides, keys, strict=True) if re.search(rf"\b{k}\b", err)]
        given = " ".join(f"--set {o}" for o in named or overrides)
        return f"{given}: {err} (the rest from {path})"
    return f"{path}: {err}"


def as_config(config: TrainConfig | dict[str, Any] | str | Path) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return TrainConfig.from_dict(config)
    return load_config(config)


__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "apply_override",
    "as_config",
    "load_config",
]
