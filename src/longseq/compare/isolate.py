"""Run a function in a fresh process, so that its peak memory is its own.

Every training run and every memory probe of `longseq compare` runs in a child of one
`longseq.forkserver.Server` (see there: why a fresh process, and how jobs travel), which has
imported torch, longseq and what a training run uses. A child that raises, dies (killed for
memory, say) or runs out of time becomes a `ChildError` with the reason. What a child prints
(the trainer's progress) goes to the terminal.

`peak_memory()` (from `longseq.bench.attention`) measures inside a child: the growth of the
RSS high-water mark (reset through /proc/self/clear_refs) on CPU, `max_memory_allocated` on
CUDA.
"""

from __future__ import annotations

import atexit
from collections.abc import Callable
from typing import Any

from longseq.bench.attention import peak_memory  # re-exported: the runner and sweep use it
from longseq.forkserver import ChildError, Server

# Imported once by the server, so no child pays for them; torch._dynamo is what AdamW's
# constructor imports (seconds), the rest is what a training run or a probe uses.
PRELOAD = [
    "torch",
    "torch._dynamo",
    "longseq.models",
    "longseq.train",
    "longseq.data.listops",
    "longseq.bench.attention",
    "longseq.compare.runner",
    "longseq.compare.sweep",
]


_SERVER = Server(PRELOAD)
atexit.register(_SERVER.close)


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """`fn(*args)` in a fresh process; its (JSON) return value, or ChildError.

    `fn` must be a module-level function and its arguments and result JSON-serialisable.
    """
    return _SERVER.call(fn, *args, timeout=timeout)


__all__ = ["ChildError", "Server", "call", "peak_memory"]
