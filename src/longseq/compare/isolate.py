"""Run a function in a fresh process, so that its peak memory is its own.

Peak memory on CPU is the growth of the resident set size, and a process keeps the pages a
previous run freed (the allocator's caches): measured in one process, the second mechanism
would look cheaper than it is. So every training run and every memory probe runs in a child
forked from a small server process that has imported torch and longseq but never run an op
(so each child starts without thread pools or cached allocations, as a new process would,
without paying the imports again), as the attention benchmark's memory probes do.
multiprocessing's "forkserver" would do the same but re-runs the caller's __main__ script in
every child; this server needs only `python -m longseq.compare.isolate`.

Jobs and results travel as JSON: a job names a module-level function ("module:name") and
its JSON arguments; the child writes its return value (or its error) to a pipe of its own,
so what it prints (the trainer's progress) goes to the terminal and never into the replies.
A child that raises, dies (killed for memory, say) or runs out of time becomes a
`ChildError` with the reason.

`peak_memory()` measures inside a child: the growth of the RSS high-water mark (reset
through /proc/self/clear_refs) on CPU, `max_memory_allocated` on CUDA.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import select
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

from longseq.bench.attention import collect_child

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


class ChildError(RuntimeError):
    """The child process raised, died or ran out of time; the message says which."""

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.trace = trace


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent process dies, so that no orphan keeps training into
    a folder that a resumed run is about to use (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def _run_child(job: dict[str, Any], write_fd: int) -> None:
    """In the forked child: stdout to stderr, run the job, reply through `write_fd`, exit."""
    _die_with_parent()
    os.dup2(2, 1)  # the child's prints must not mix with the server's replies
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nor may it read the server's jobs
    try:
        result = _resolve(job["fn"])(*job["args"], **job["kwargs"])
        reply = {"ok": True, "result": result}
    except BaseException as err:  # every failure goes back to the parent, which records it
        text = f"{type(err).__name__}: {err}".strip()
        reply = {"ok": False, "error": text, "trace": traceback.format_exc()}
    data = json.dumps(reply).encode()
    view = memoryview(data)
    while view:
        view = view[os.write(write_fd, view) :]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve() -> None:
    """The server: import PRELOAD, then fork one child per job line read from stdin."""

    _die_with_parent()
    for mod in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(mod)
    for line in sys.stdin:
        job = json.loads(line)
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _run_child(job, write_fd)
        os.close(write_fd)
        data, error = collect_child(pid, read_fd, job["timeout"])
        reply = {"ok": False, "error": error, "trace": ""} if error else json.loads(data)
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Server:
    """A running `_serve` process; `call` sends it one job and waits for the reply."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "longseq.compare.isolate", "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self.proc

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        job = {
            "fn": f"{fn.__module__}:{fn.__qualname__}",
            "args": list(args),
            "kwargs": {},
            "timeout": timeout,
        }
        try:
            proc.stdin.write(json.dumps(job) + "\n")
            proc.stdin.flush()
            # the server answers within `timeout`; the margin covers its own start (imports)
            wait = None if timeout is None else timeout + 120
            line = proc.stdout.readline() if select.select([proc.stdout], [], [], wait)[0] else ""
        except BrokenPipeError:
            line = ""
        except BaseException:  # KeyboardInterrupt: the child and the server go too
            self.close()
            raise
        if not line:
            self.close()
            raise ChildError("the process server stopped (killed for memory?)")
        reply = json.loads(line)
        if not reply["ok"]:
            raise ChildError(reply["error"], reply.get("trace", ""))
        return reply["result"]

    def close(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_SERVER = Server()
atexit.register(_SERVER.close)


def call(fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
    """`fn(*args)` in a fresh process; its (JSON) return value, or ChildError.

    `fn` must be a module-level function and its arguments and result JSON-serialisable.
    """
    return _SERVER.call(fn, *args, timeout=timeout)


def peak_memory(device: str) -> Callable[[], int]:
    """Start measuring; the returned function gives the peak growth in bytes since then."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        return lambda: max(0, torch.cuda.max_memory_allocated() - base)
    from longseq.bench.attention import reset_peak_rss

    growth = reset_peak_rss()
    return lambda: max(0, growth())


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        try:
            _serve()
        except KeyboardInterrupt:  # Ctrl-C reaches the whole group; the caller reports it
            sys.exit(130)
    else:
        sys.exit("usage: python -m longseq.compare.isolate --serve (internal to longseq compare)")


__all__ = ["ChildError", "Server", "call", "peak_memory"]
