"""Process group set-up for data parallel training under `torchrun` (or a single process).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT) in each process's
environment; with WORLD_SIZE > 1 we join the group: NCCL when each process drives a GPU
(cuda:LOCAL_RANK), gloo on CPU. Every rank runs the same program on its share of each global
batch; DDP averages the gradients. Rank 0 alone writes logs and checkpoints.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 (immutable default)
    created_group: bool = False  # we called init_process_group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
        """Sum (or `op`) over ranks, in place; a no-op in one process."""
        if self.enabled:
            dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
        return tensor

    def sequence_groups(self, size: int) -> tuple[int, int, Any]:
        """Split the world into groups of `size` consecutive ranks that share each sequence
        (sequence parallelism); returns (data-parallel rank, data-parallel size, this rank's
        group). Every rank creates every group, as torch.distributed requires."""
        if self.world_size % size:
            raise ValueError(
                f"run.sequence_parallel={size} does not divide the {self.world_size} processes "
                "(world = data parallel x sequence parallel)"
            )
        mine = None
        for g in range(self.world_size // size):
            ranks = list(range(g * size, (g + 1) * size))
            group = dist.new_group(ranks)
            if self.rank in ranks:
                mine = group
        return self.rank // size, self.world_size // size, mine

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.created_group and dist.is_initialized():
            # Every rank reaches this point before any tears down: a rank that destroyed its
            # gloo group while another was still saving aborted now and then at exit
            # ("terminate called without an active exception"), failing the torchrun.
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def setup(device: str = "auto") -> Distributed:
    """Pick the device and, under torchrun, join the process group."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("run.device=cuda but no CUDA device is available; use cpu or auto")
    if device == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={local} but only {torch.cuda.device_count()} CUDA device(s): "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    if dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
    return Distributed(rank, world, local, dev, created)


# --------------------------------------------------------------------------- errors, launch
# A user error (a bad config, a run folder in use) is met by every rank alike: printed by
# each, torchrun showed it once per process. `report_error` prints it once.


def _agent_store(timeout: float) -> Any:
    """A client of torchrun's agent store (None outside torchrun, or if it cannot be
    reached): it outlives the ranks, so rank 0 can leave its message there and exit."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or _env_int("WORLD_SIZE", 1) < 2:
        return None
    from datetime import timedelta

    try:
        store = dist.TCPStore(
            env["MASTER_ADDR"],
            int(env["MASTER_PORT"]),
            is_master=False,
            timeout=timedelta(seconds=timeout),
        )
    except (KeyError, ValueError, RuntimeError):
        return None
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"longseq/errors/{env.get('TORCHELASTIC_RUN_ID', '')}/{attempt}", store)


def report_error(message: str, wait: float = 5.0) -> None:
    """Print `error: message` once for all the ranks of a torchrun job: rank 0 prints its
    own; another rank prints its own (naming its rank) only when rank 0 reported a different
    one, or none within `wait` seconds (an error of that rank alone). Else: printed."""
    rank = _env_int("RANK", 0)
    store = _agent_store(wait)
    if store is None or rank == 0:
        if store is not None:
            store.set("0", message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        return
    from datetime import timedelta

    try:
        store.wait(["0"], timedelta(seconds=wait))
        first = store.get("0").decode()
    except RuntimeError:  # the wait timed out: rank 0 met no such error
        first = None
    if first != message:
        print(f"error (rank {rank}): {message}", file=sys.stderr, flush=True)


def launch(nproc: int, argv: list[str]) -> int:
    """`longseq ARGV` in `nproc` processes on this machine, as `torchrun --standalone
    --nproc_per_node NPROC -m longseq.cli ARGV` runs it, but a failed rank ends this process
    with the rank's exit code and no traceback of the launcher (the ranks said why)."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    args = ["--standalone", "--nproc_per_node", str(nproc), "-m", "longseq.cli", *argv]
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        if failure.exitcode < 0:  # killed by a signal: no rank said why
            print(f"error: rank {rank} was killed by signal {-failure.exitcode}", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


__all__ = ["Distributed", "launch", "report_error", "setup"]
