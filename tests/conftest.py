import os

import pytest
import torch


def _threads() -> int:
    """Intra-op threads per test process: the cores shared out among pytest-xdist's workers
    (`make test` runs `-n auto --maxprocesses 2`), so that two workers on two cores use one
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
