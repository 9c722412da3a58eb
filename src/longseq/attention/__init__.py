"""Self-attention mechanisms behind one API.

layer = longseq.attention.build("longformer", hidden_size=768, num_heads=12, window=512)
out = layer(hidden_states, attention_mask=mask, global_attention_mask=glob)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from longseq.attention.base import SelfAttention

# name -> "module:Class"; imported on first use so one mechanism never slows another's import.
_REGISTRY: dict[str, str | type[SelfAttention]] = {
    "full": "longseq.attention.dense:FullAttention",
    "longformer": "longseq.attention.longformer:LongformerAttention",
    "bigbird": "longseq.attention.bigbird:BigBirdAttention",
    "linformer": "longseq.attention.linformer:LinformerAttention",
    "lsh": "longseq.attention.lsh:LSHAttention",
    "local": "longseq.attention.local:LocalAttention",
}

MECHANISMS: tuple[str, ...] = tuple(_REGISTRY)


def register(cls: type[SelfAttention], target: str | None = None) -> None:
    """Add a mechanism under `cls.name` (`target`: its "module:Class" path, for a lazy import;
    default: the class itself). Models, the trainer, generation, compare, the benchmark and
    the pictures then take it by name: they ask the class, never test the name."""
    global MECHANISMS
    if not (isinstance(cls, type) and issubclass(cls, SelfAttention)):
        raise ValueError(f"register takes a SelfAttention subclass, got {cls!r}")
    _REGISTRY[cls.name] = target or cls
    MECHANISMS = tuple(_REGISTRY)


def register_path(name: str, target: str) -> None:
    """Add a mechanism by its "module:Class" path (imported on first use)."""
    global MECHANISMS
    _REGISTRY[name] = target
    MECHANISMS = tuple(_REGISTRY)


def runtime_registered() -> dict[str, str]:
    """Mechanisms registered as classes in this process: name -> "module:Class" (what a child
    process needs to register them too)."""
    return {
        name: f"{e.__module__}:{e.__qualname__}"
        for name, e in _REGISTRY.items()
        if not isinstance(e, str)
    }


def unregister(name: str) -> None:
    """Remove a mechanism added by `register` (tests)."""
    global MECHANISMS
    _REGISTRY.pop(name, None)
    MECHANISMS = tuple(_REGISTRY)


def mechanisms() -> tuple[str, ...]:
    """Every registered name (the registry is the only list of mechanisms)."""
    return tuple(_REGISTRY)


def get(name: str) -> type[SelfAttention]:
    """The layer class registered under `name`."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown attention mechanism {name!r}; valid names: {', '.join(_REGISTRY)}"
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
            f"{', '.join(sorted(valid))}"
        )
    return cls(hidden_size, num_heads, **opts)


__all__ = [
    "MECHANISMS",
    "SelfAttention",
    "build",
    "get",
    "mechanisms",
    "options",
    "register",
    "register_path",
    "runtime_registered",
    "unregister",
]
