"""The data sets of `longseq compare`: each registered task declares its own (`Task.compare`,
`longseq.tasks`), built once per output folder, then shared by every mechanism. Built in:

    recall             associative recall by distance (values as classes), accuracy per
                       distance range, the prediction from the patterns beside it
    listops            ListOps as the Long Range Arena generates it (10 classes), accuracy
    shakespeare-genre  Shakespeare scenes by genre (4 classes), bytes, accuracy
    kernel-docs        Linux kernel documents by subsystem, bytes, accuracy
    gcide-qa           GCIDE entries as long documents, a question naming one headword,
                       its definition the answer span: exact match and F1 by distance
    shakespeare-lm     the plays' text, byte-level causal LM, bits per byte
    gcide-lm           the GCIDE dictionary, byte-level causal LM, bits per byte

ListOps and recall are generated from the seed (no download). The real-data sets are built
from installed packages by `longseq.data.real` (the same files `longseq data NAME` writes), or
read from a folder given with --data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from longseq import tasks
from longseq.compare.presets import Preset
from longseq.tasks import CompareTask, Splits


def get(name: str) -> CompareTask:
    known = tasks.compare_tasks()
    if name not in known:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(known)}")
    return known[name]


def prepare(
    ct: CompareTask,
    preset: Preset,
    seed: int,
    root: Path,
    given: Path | None = None,
    log: Callable[[str], None] = print,
) -> Splits:
    """Build (or find) the splits of `ct` under `root` (or in `given`); return the files."""
    folder = Path(given) if given else root / (ct.dataset or ct.name)
    return tasks.get(ct.task).prepare(ct, preset, seed, folder, given is not None, log)


__all__ = ["get", "prepare"]
