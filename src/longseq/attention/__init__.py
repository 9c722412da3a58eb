"""Self-attention mechanisms behind one API.

layer = longseq.attention.build("longformer", hidden_size=768, num_heads=12, window=512)
out = layer(hidden_states, attention_mask=mask, global_attention_mask=glob)

The registry holds the mechanisms (`mechanisms()`: what models, compare, the benchmark and the
pictures offer) and, apart, the ports (`ports()`): subclasses that reproduce another
implementation's quirks for converted checkpoints (`longseq.convert.hf_attention`). `build` and
`get` take both; `upgrade` turns an older config's options that selected a quirk (e.g. LSH's
`wrap_rounds=True`) into the port's name.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from longseq.attention.base import SelfAttention, check_kv_heads

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

# Ports: name -> "module:Class"; and what an older config wrote instead of each port's name:
# (core mechanism, option) -> {value: port name, or None for the core mechanism itself}.
_PORTS: dict[str, str] = {}
_PORT_BASE: dict[str, str] = {}  # port -> the mechanism it subclasses
_LEGACY: dict[tuple[str, str], dict[Any, str | None]] = {}


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


def register_port(
    name: str, target: str, *, base: str, legacy: tuple[str, Any, Any] | None = None
) -> None:
    """Add a port (a subclass of mechanism `base` with another implementation's rules) by its
    "module:Class" path. `legacy` = (option, port value, core value): older configs selected
    the port with `option=port value` on `base` and the core rule with `option=core value`."""
    _PORTS[name], _PORT_BASE[name] = target, base
    if legacy is not None:
        option, port_value, core_value = legacy
        _LEGACY[base, option] = {port_value: name, core_value: None}


def ports() -> tuple[str, ...]:
    """The registered ports (layers of converted checkpoints; not offered as mechanisms)."""
    return tuple(_PORTS)


def upgrade(name: str, opts: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(name, options) of a layer in an older config, in today's terms: an option that
    selected a port's rule becomes the port's name, one that selected the core rule goes.
    Anything else is returned as it is (and validated where the layer is built)."""
    opts = dict(opts)
    new = name
    for (base, option), choices in _LEGACY.items():
        if name != base or option not in opts:
            continue
        matched, port = _chosen(choices, opts[option])
        if matched:
            del opts[option]
            new = port or new
    return new, opts


def _chosen(choices: dict[Any, str | None], given: Any) -> tuple[bool, str | None]:
    """(whether a legacy option's value is one it had, the port it chose or None for the core
    rule). 1 is not True here."""
    for value, port in choices.items():
        if type(given) is type(value) and given == value:
            return True, port
    return False, None


def moved_to_port(name: str, given: dict[str, Any]) -> str:
    """A hint for options of `name` that are not its own: older versions' options a port took
    over (with what the given value means now), and options of a port of `name` only."""
    hints = []
    for (base, option), choices in _LEGACY.items():
        if base == name and option in given:
            matched, port = _chosen(choices, given[option])
            if matched:
                now = f"attention {port!r}" if port else "the only rule: remove it"
                hints.append(f"{option}={given[option]!r} is now {now}")
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
            f"{', '.join(sorted(valid))}{moved_to_port(name, {k: opts[k] for k in unknown})}"
        )
    return cls(hidden_size, num_heads, **opts)


__all__ = [
    "MECHANISMS",
    "SelfAttention",
    "build",
    "check_kv_heads",
    "get",
    "mechanisms",
    "moved_to_port",
    "options",
    "ports",
    "register",
    "register_path",
    "register_port",
    "runtime_registered",
    "unregister",
    "upgrade",
]
