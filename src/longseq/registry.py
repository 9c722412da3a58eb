"""What the mechanism and task registries share: naming their entries for a child process."""

from __future__ import annotations

from collections.abc import Mapping


def class_paths(entries: Mapping[str, object]) -> dict[str, str]:
    """The entries registered as classes in this process (not as "module:Class" paths), as
    name -> "module:Class": what a child process needs to register them too."""
    return {
        name: f"{e.__module__}:{e.__qualname__}"  # type: ignore[attr-defined]
        for name, e in entries.items()
        if not isinstance(e, str)
    }
