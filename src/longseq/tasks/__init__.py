"""Tasks behind one API: each task is one registry entry (a `Task` subclass) that owns its
model head, tokenizer, datasets per split, label names, metrics, per-distance scoring, what
`predict` reads, and its part of `longseq compare` (data, chart lines, report section).

    task = longseq.tasks.get("recall")
    tokenizer = task.tokenizer(data_config, init_from=None)
    dataset = task.dataset(data_config, tokenizer, "recall_test.jsonl", split="test")

train/, compare/, `longseq evaluate` and `longseq predict` ask the entry; none tests a task's
name. Adding a task is one module with a `Task` subclass plus `register` (or a line in
`_REGISTRY` for a built-in one); see docs/training.md.
"""

from __future__ import annotations

import importlib

from longseq.registry import class_paths
from longseq.tasks.base import CompareTask, Splits, SplitSource, Task

# name -> "module:Class"; imported on first use, so `import longseq.tasks` stays cheap.
_REGISTRY: dict[str, str | type[Task]] = {
    "classification": "longseq.tasks.text:Classification",
    "lm": "longseq.tasks.lm:LanguageModelling",
    "mlm": "longseq.tasks.lm:MaskedLanguageModelling",
    "listops": "longseq.tasks.listops:ListOps",
    "recall": "longseq.tasks.recall:Recall",
    "qa": "longseq.tasks.qa:QuestionAnswering",
    "genome-bases": "longseq.tasks.genome:GenomeBases",
    "genome-cds": "longseq.tasks.genome:GenomeCDS",
    "genome-mlm": "longseq.tasks.genome:GenomeMLM",
    "genome-promoters": "longseq.tasks.genome:GenomePromoters",
    "summarisation": "longseq.tasks.summarise:Summarisation",
    "long-context": "longseq.tasks.longctx:LongContext",
}
_INSTANCES: dict[str, Task] = {}


def register(cls: type[Task]) -> None:
    """Add a task under `cls.name`: training, evaluation, predict and compare then take it."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"register takes a Task subclass, got {cls!r}")
    _REGISTRY[cls.name] = cls
    _INSTANCES.pop(cls.name, None)


def unregister(name: str) -> None:
    """Remove a task added by `register` (tests)."""
    _REGISTRY.pop(name, None)
    _INSTANCES.pop(name, None)


def names() -> tuple[str, ...]:
    """Every registered task (the registry is the only list of tasks)."""
    return tuple(_REGISTRY)


def runtime_registered() -> dict[str, str]:
    """Tasks registered as classes in this process: name -> "module:Class" (what a child
    process needs to register them too)."""
    return class_paths(_REGISTRY)


def register_path(name: str, target: str) -> None:
    """Add a task by its "module:Class" path (imported on first use)."""
    _REGISTRY[name] = target
    _INSTANCES.pop(name, None)


def get(name: str) -> Task:
    """The task registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(_REGISTRY)}")
    if name not in _INSTANCES:
        entry = _REGISTRY[name]
        if isinstance(entry, str):
            module, cls = entry.split(":")
            entry = getattr(importlib.import_module(module), cls)
        _INSTANCES[name] = entry()
    return _INSTANCES[name]


def for_architecture(architecture: str) -> Task | None:
    """The first registered task that trains a model of `architecture` (what `longseq
    evaluate` and `predict` take a saved model's data as when no run config names the task),
    or None."""
    return next((get(n) for n in _REGISTRY if get(n).architecture == architecture), None)


def compare_tasks() -> dict[str, CompareTask]:
    """Every task's `longseq compare` data sets, by name, in registry order."""
    out: dict[str, CompareTask] = {}
    for name in _REGISTRY:
        for ct in get(name).compare:
            if ct.name in out:
                raise ValueError(f"compare task {ct.name!r} is declared twice")
            out[ct.name] = ct
    return out


__all__ = [
    "CompareTask",
    "SplitSource",
    "Splits",
    "Task",
    "compare_tasks",
    "for_architecture",
    "get",
    "names",
    "register",
    "register_path",
    "runtime_registered",
    "unregister",
]
