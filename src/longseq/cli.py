"""The `longseq` command.

Every command group lives beside its code, in its package's `commands.py`: each module in
`COMMAND_MODULES` has `register(commands)`, which adds its sub-parser with
`set_defaults(func=run)` where `run(args) -> int`. Every module is imported to build the
parser (and `import longseq` brings in torch), so they import at the top; only optional or slow
dependencies (transformers, matplotlib) wait until a command needs them, with the reason.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

import longseq

# Modules that add their own sub-commands (see the module docstring).
COMMAND_MODULES: tuple[str, ...] = (
    "longseq.bench.commands",
    "longseq.compare.commands",
    "longseq.convert.commands",
    "longseq.data.commands",
    "longseq.models.commands",
    "longseq.train.commands",
    "longseq.viz.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longseq", description="Transformers for long sequences: tools."
    )
    parser.add_argument("--version", action="version", version=f"longseq {longseq.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args))


def _exit(code: int) -> None:
    """Exit; under torchrun without C++ static destructors. A gloo rank sometimes aborted at
    interpreter exit ("terminate called without an active exception", about 1 run in 10 on
    2 busy cores) after its process group was destroyed and its work done, and torchrun
    then failed the whole job; os._exit skips the teardown that aborts."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
