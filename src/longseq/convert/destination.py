"""Where `longseq convert` and `longseq longify` write: never into their source, never over
someone else's files.

`check(src, dst, force)` refuses a destination that is the source, lies inside it or contains
it, is a file, or is a non-empty folder (unless `force`, and then only a folder a longseq
command wrote: one whose config.json is a longseq model config, or one holding the
export.json that `longseq export` writes). `write(dst, save)` writes
through a sibling `DST.tmp` folder and swaps it in, so an interrupted command leaves either
the old folder or the new one, never a mix.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

EXPORT_RECORD = "export.json"  # what `longseq export` writes beside its files


def _is_longseq_output(folder: Path) -> bool:
    if (folder / EXPORT_RECORD).is_file():
        return True
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"architecture", "attention"} <= set(config)


def check(src: str | Path, dst: str | Path, force: bool) -> str | None:
    """Why `dst` must not be written, or None."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    if d == s or s in d.parents:
        return f"DST {dst} is SRC or inside it: write the result elsewhere"
    if d in s.parents:
        return f"DST {dst} contains SRC {src}: write the result elsewhere"
    if d.exists() and not d.is_dir():
        return f"DST {dst} is a file, not a folder"
    if d.is_dir() and any(d.iterdir()):
        if not force:
            return f"{dst} exists and is not an empty folder; pass --force to replace it"
        if not _is_longseq_output(d):
            return (
                f"{dst} is not a longseq model folder (no longseq config.json): --force only "
                "replaces the output of an earlier longseq command"
            )
    return None


def write(dst: str | Path, save: Callable[[Path], object]) -> None:
    """`save(folder)` into DST.tmp, then DST.tmp takes DST's place (the old DST is removed)."""
    final = Path(dst)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    save(tmp)
    if final.exists():
        old = final.with_name(final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)


__all__ = ["check", "write"]
