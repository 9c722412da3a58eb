"""Self-attention mechanisms behind one API.

layer = longseq.attention.build("longformer", hidden_size=768, num_heads=12, window=512)
out = layer(hidden_states, attention_mask=mask, global_attention_mask=glob)

The registry holds the mechanisms (`mechanisms()`: what models, compare, the benchmark and the
pictures offer) and, apart, the ports (`ports()`): subclasses that reproduce another
implementation's quirks for converted checkpoints (`longseq.convert.hf_attention`). `build` and
`get` take both. `baseline()` names the mechanism the others are measured against (the class
that says `baseline = True`: full attention).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from longseq.attention.base import At, SelfAttention, check_kv_heads
from longseq.registry import class_paths

# name -> "module:Class"; imported on first use so one mechanism never slows another's import.
_REGISTRY: dict[str, str | type[SelfAttention]] = {
    "full": "longseq.attention.dense:FullAttention",
    "longformer": "longseq.attention.longformer:LongformerAttention",
    "bigbird": "longseq.attention.bigbird:BigBirdAttention",
    "linformer": "longseq.attention.linformer:LinformerAttention",
    "lsh": "longseq.attention.lsh:LSHAttention",
    "local": "longseq.attention.local:LocalAttention",
}

# Ports: name -> "module:Class".
_PORTS: dict[str, str] = {}
_PORT_BASE: dict[str, str] = {}  # port -> the mechanism it subclasses


def register(cls: type[SelfAttention], target: str | None = None) -> None:
    """Add a mechanism under `cls.name` (`target`: its "module:Class" path, for a lazy import;
    default: the class itself). Models, the trainer, generation, compare, the benchmark and
    the pictures then take it by name: they ask the class, never test the name."""
    if not (isinstance(cls, type) and issubclass(cls, SelfAttention)):
        raise ValueError(f"register takes a SelfAttention subclass, got {cls!r}")
    _REGISTRY[cls.name] = target or cls


def register_path(name: str, target: str) -> None:
    """Add a mechanism by its "module:Class" path (imported on first use)."""
    _REGISTRY[name] = target


def runtime_registered() -> dict[str, str]:
    """Mechanisms registered as classes in this process: name -> "module:Class" (what a child
    process needs to register them too)."""
    return class_paths(_REGISTRY)


def unregister(name: str) -> None:
    """Remove a mechanism added by `register` (tests)."""
    _REGISTRY.pop(name, None)


def mechanisms() -> tuple[str, ...]:
    """Every registered name (the registry is the only list of mechanisms)."""
    return tuple(_REGISTRY)


def baseline() -> str:
    """The registered mechanism every other is measured against (compare, the benchmark): the
    first whose class says `baseline = True`."""
    for name in _REGISTRY:
        if get(name).baseline:
            return name
    raise ValueError("no registered mechanism is a baseline (a class with baseline = True)")


def sequence_parallel() -> tuple[str, ...]:
    """The mechanisms with a sequence-parallel form (`attend_sharded`; the class says so)."""
    return tuple(m for m in _REGISTRY if get(m).sequence_parallel)


def register_port(name: str, target: str, *, base: str) -> None:
    """Add a port (a subclass of mechanism `base` with another implementation's rules) by its
    "module:Class" path."""
    _PORTS[name], _PORT_BASE[name] = target, base


def ports() -> tuple[str, ...]:
    """The registered ports (layers of converted checkpoints; not offered as mechanisms)."""
    return tuple(_PORTS)


def port_hint(name: str, given: dict[str, Any]) -> str:
    """A hint for options of `name` that are not its own but a port of `name`'s."""
    hints = []
    for port, base in _PORT_BASE.items():
        if base == name:
            only = sorted(set(given) & (set(options(port)) - set(options(name))))
            hints += [f"{option} is an option of {port!r} only" for option in only]
    return f" ({'; '.join(hints)})" if hints else ""


def get(name: str) -> type[SelfAttention]:
    """The layer class registered under `name` (a mechanism or a port)."""
    if name in _PORTS:
        module, cls = _PORTS[name].split(":")
        return getattr(importlib.import_module(module), cls)
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown attention mechanism {name!r}; valid names: {', '.join(_REGISTRY)} "
            f"(Hugging Face ports, for converted checkpoints: {', '.join(_PORTS)})"
        )
    entry = _REGISTRY[name]
    if not isinstance(entry, str):
        return entry
    module, cls = entry.split(":")
    return getattr(importlib.import_module(module), cls)


def options(name: str) -> dict[str, Any]:
    """Keyword options `build(name, ...)` accepts, with their defaults."""
    cls = get(name)
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if "__init__" not in vars(klass) or not issubclass(klass, SelfAttention):
            continue
        for p in inspect.signature(klass.__init__).parameters.values():
            if p.kind is p.KEYWORD_ONLY:
                out[p.name] = p.default
    return out


def build(name: str, hidden_size: int, num_heads: int, **opts: Any) -> SelfAttention:
    """Build the self-attention layer `name` (projections included)."""
    cls = get(name)
    valid = options(name)
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {name!r} attention; valid options: "
            f"{', '.join(sorted(valid))}{port_hint(name, {k: opts[k] for k in unknown})}"
        )
    return cls(hidden_size, num_heads, **opts)


__all__ = [
    "At",
    "SelfAttention",
    "baseline",
    "build",
    "check_kv_heads",
    "get",
    "mechanisms",
    "options",
    "port_hint",
    "ports",
    "register",
    "register_path",
    "register_port",
    "runtime_registered",
    "sequence_parallel",
    "unregister",
]
