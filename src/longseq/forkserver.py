"""A fork server: run a function in a fresh process that starts with its imports done.

Peak memory on CPU is the growth of the resident set size, and a process keeps the pages a
previous run freed (the allocator's caches), so measuring several things in one process makes
the later ones look cheaper. `Server` starts `python -m longseq.forkserver --serve MODULE ...`,
which imports the given modules once and never runs a torch op, then forks one child per job:
each child starts without thread pools or cached allocations, as a new process would, without
paying the imports again (torch ~2 s, transformers ~5 s). multiprocessing's "forkserver" does
the same but re-runs the caller's __main__ script in every child.

Jobs and results travel as JSON: a job names a module-level function ("module:name") and its
JSON arguments; the child writes its return value (or its error) to a pipe of its own, so what
it prints never mixes with the replies (it goes to stderr, or nowhere with `quiet`). A child
that raises, dies (killed for memory, say) or runs out of time becomes a `ChildError` with the
reason; `ChildError.trace` is empty when the child died or timed out rather than raised.
Used by the attention benchmark's memory probes and by `longseq compare`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any


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

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _resolve(name: str) -> Callable[..., Any]:
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


def collect_child(pid: int, read_fd: int, timeout: float | None) -> tuple[bytes, str | None]:
    """Read a forked child's reply from `read_fd` until it closes, then reap the child.

    Returns (data, error): error is None when a reply came, else why not: the child ran past
    `timeout` seconds (it is killed), or died without writing (a signal: often the OOM killer).
    Closes `read_fd`.
    """
    chunks: list[bytes] = []
    error = None
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not select.select([read_fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            error = f"no result after {timeout:.0f} s (stopped)"
            break
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(read_fd)
    if error is None and not chunks:
        why = (
            f"signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"exit code {os.WEXITSTATUS(status)}"
        )
        error = f"the process died ({why}; killed for memory?)"
    return b"".join(chunks), error


def _run_child(job: dict[str, Any], write_fd: int) -> None:
    """In the forked child: redirect output, run the job, reply through `write_fd`, exit."""
    _die_with_parent()
    if job["quiet"]:
        out = os.open(os.devnull, os.O_WRONLY)
        os.dup2(out, 1)
        os.dup2(out, 2)
    else:
        os.dup2(2, 1)  # the child's prints must not mix with the server's replies
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # nor may it read the server's jobs
    try:
        sys.path[:0] = [p for p in job.get("sys_path", ()) if p not in sys.path]
        for module, entries in job.get("registered", {}).items():
            registry = importlib.import_module(module)
            for name, target in entries.items():
                registry.register_path(name, target)
        result = _resolve(job["fn"])(*job["args"])
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


def _serve(preload: list[str]) -> None:
    """The server: import `preload`, then fork one child per job line read from stdin."""
    _die_with_parent()
    for mod in preload:
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


# Registries whose entries registered at run time a child registers too: each module has
# runtime_registered() -> {name: "module:Class"} and register_path(name, target).
REGISTRIES: tuple[str, ...] = ("longseq.attention", "longseq.tasks")


def _runtime_registered() -> dict[str, dict[str, str]]:
    """Mechanisms and tasks registered in this process at run time, by registry module (those
    never imported have none)."""
    out = {}
    for module in REGISTRIES:
        registry = sys.modules.get(module)
        if registry is not None and registry.runtime_registered():
            out[module] = registry.runtime_registered()
    return out


class Server:
    """A running `_serve` process; `call` sends it one job and waits for the reply.

    `preload`: modules the server imports once; `quiet`: discard what the children print.
    """

    def __init__(self, preload: list[str], quiet: bool = False) -> None:
        self.preload, self.quiet = list(preload), quiet
        self.proc: subprocess.Popen[str] | None = None

    def _start(self) -> subprocess.Popen[str]:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "longseq.forkserver", "--serve", *self.preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        return self.proc

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """`fn(*args)` in a fresh process; its (JSON) return value, or ChildError.

        `fn` must be a module-level function and its arguments and result JSON-serialisable.
        """
        proc = self._start()
        assert proc.stdin is not None and proc.stdout is not None
        job = {
            "fn": f"{fn.__module__}:{fn.__qualname__}",
            "args": list(args),
            "timeout": timeout,
            "quiet": self.quiet,
            # mechanisms and tasks registered at run time, and where their modules are found
            "registered": _runtime_registered(),
            "sys_path": list(sys.path),
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
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        try:
            _serve(sys.argv[2:])
        except KeyboardInterrupt:  # Ctrl-C reaches the whole group; the caller reports it
            sys.exit(130)
    else:
        sys.exit("usage: python -m longseq.forkserver --serve [MODULE ...] (internal to longseq)")


__all__ = ["ChildError", "Server", "collect_child"]
