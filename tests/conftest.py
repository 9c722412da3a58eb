import collections
import json
import os
import resource
from pathlib import Path

import pytest
import torch


def _threads() -> int:
    """Intra-op threads per test process: the cores shared out among pytest-xdist's workers
    (`make test` runs `-n 2`), so that two workers on two cores use one
    thread each instead of four threads fighting over two cores; 2 in a plain `pytest` run."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers <= 1:
        return 2
    return max(1, (os.cpu_count() or 1) // workers)


THREADS = _threads()
if "PYTEST_XDIST_WORKER" in os.environ:
    # what the processes a test starts (the CLI, torchrun, the fork server) inherit
    os.environ["OMP_NUM_THREADS"] = str(THREADS)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)
    yield


def _in_group(rank, world, port, fn, args):
    """A forked child: join a gloo group of `world`, run fn(rank, world, *args), leave."""
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


@pytest.fixture
def run_on_processes():
    """run(fn, world, *args): fn(rank, world, *args) in `world` forked processes joined in a
    gloo group (forked, so fn needs no importable module; no CUDA in the parent). A child's
    exception fails the test."""
    import socket

    import torch.multiprocessing as mp

    def run(fn, world, *args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(
            _in_group, args=(world, port, fn, args), nprocs=world, join=True, start_method="fork"
        )

    return run


# `pytest --cpu-times FILE`: each test's CPU time (its process and the child processes it
# reaped, user + sys), one JSON line per test, and at the end the CPU per worker and the
# costliest modules: what a run costs on a loaded machine, where wall time says little.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-times", metavar="FILE", help="write each test's CPU time to FILE")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("--cpu-times")
    if path and "PYTEST_XDIST_WORKER" not in os.environ:  # before the workers start
        Path(path).unlink(missing_ok=True)


def _cpu_seconds() -> float:
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    path = item.config.getoption("--cpu-times")
    before = _cpu_seconds()
    yield
    if path:
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        line = {"test": item.nodeid, "worker": worker, "cpu_s": _cpu_seconds() - before}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    path = config.getoption("--cpu-times")
    if not path or not os.path.exists(path):
        return
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    workers: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    for r in rows:
        workers[r["worker"]] += r["cpu_s"]
        modules[r["test"].split("::")[0]] += r["cpu_s"]
    per_worker = ", ".join(f"{w} {s:.0f}" for w, s in sorted(workers.items()))
    terminalreporter.write_sep("-", f"CPU seconds in tests ({path}): {per_worker}")
    for m, s in modules.most_common(12):
        terminalreporter.write_line(f"{s:7.1f}  {m}")
