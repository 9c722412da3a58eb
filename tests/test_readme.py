"""The README's command lines, so that the README cannot drift from the code.

- Always: every `longseq` line of the quick start parses with the real command-line parser,
  every `--config` file it names loads with its `--set` values, and every file it reads from
  the repository exists.
- On the schedule (`-m slow`, docs/testing.md): the whole block runs in order in a fresh
  folder, as a new user would run it, each line shortened by `SHORTER` (fewer steps, smaller
  data), and each must exit 0.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from longseq.cli import build_parser
from longseq.train.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Quick start on the command line"

# How each line is made to run in seconds: (regex, replacement), applied in order to every line
# of the block (after continuation lines are joined). A line no rule shortens runs as written.
TRAIN_SHORT = (
    " --set optim.max_steps=2 --set optim.warmup_steps=0 --set run.eval_every=2"
    " --set run.eval_batches=1 --set data.batch_size=2"
)
SHORTER: list[tuple[str, str]] = [
    (r"^((?:longseq|torchrun) .*\btrain --config \S+.*)$", r"\1" + TRAIN_SHORT),
    (r"--max-new-tokens \d+", "--max-new-tokens 8"),
    (r"^(longseq generate (?!.*--max-new-tokens).*)$", r"\1 --max-new-tokens 8"),
    (
        r"^(longseq compare --out \S+).*$",
        r"\1 --steps 2 --seeds 1 --no-sweep --set recall_train=64 --set recall_val=16"
        r" --set recall_test=16",
    ),
    (
        r"^(longseq compare --task listops --out \S+).*$",
        r"\1 --steps 2 --no-sweep --set listops_train=32 --set listops_val=8"
        r" --set listops_test=8 --set listops_min_length=40 --set listops_max_length=200",
    ),
    (r"^(longseq data recall .*)$", r"\1 --train 64 --val 16 --test 16"),
    (r"--train 2000 --val 200 --test 200", "--train 32 --val 8 --test 8"),
    (r"--lengths 1024,4096,16384", "--lengths 256 --repeats 1 --warmup 0 --no-peers"),
]


def readme_lines() -> list[str]:
    """The shell lines of the quick start's code block: continuations joined, comments and
    blank lines dropped."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(SECTION) :]
    block = re.search(r"```\n(.*?)```", after, re.S)
    assert block, f"no code block under {SECTION!r} in README.md"
    joined = block.group(1).replace("\\\n", " ")
    lines = []
    for raw in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", raw.strip())  # a trailing comment (README's never quote #)
        if line and not line.startswith("#"):
            lines.append(" ".join(line.split()))
    return lines


def shorten(line: str) -> str:
    for pattern, repl in SHORTER:
        line = re.sub(pattern, repl, line)
    return line


def _argv(line: str) -> list[str] | None:
    """The `longseq` arguments of a line (also `torchrun -m longseq.cli`), else None."""
    words = shlex.split(line.split("|")[-1].split(">")[0])
    if words[:1] == ["longseq"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "longseq.cli" in words:
        return words[words.index("longseq.cli") + 1 :]
    return None


def test_the_block_has_the_main_commands():
    lines = readme_lines()
    for needed in ("longseq train", "torchrun", "longseq predict", "longseq generate"):
        assert any(needed in line for line in lines), needed


@pytest.mark.parametrize("line", [ln for ln in readme_lines() if _argv(ln) is not None])
def test_every_longseq_line_parses(line):
    argv = _argv(line)
    args = build_parser().parse_args(argv)  # exits (fails) on an unknown command or option
    for name in ("config", "data", "model"):
        path = getattr(args, name, None)
        if isinstance(path, str) and path.startswith("examples/"):
            assert (ROOT / path).exists(), path
    if args.command == "train":
        load_config(ROOT / args.config, args.overrides)


def test_shortening_keeps_every_line_and_changes_the_slow_ones():
    lines = readme_lines()
    short = [shorten(line) for line in lines]
    assert len(short) == len(lines)
    for line, new in zip(lines, short, strict=True):
        if re.search(r"\b(train --config|compare|bench attention|generate)\b", line):
            assert new != line, f"no shortening rule matches {line!r}"


@pytest.mark.slow
def test_the_readme_runs_in_order(tmp_path):
    """Every line of the quick start, shortened, in order, in one shell (its variables carry
    over) in a fresh folder; the trace names the line that failed."""
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    script = "PS4='+ [${SECONDS}s] '\nset -euxo pipefail\n"  # the trace says when each line began
    script += "\n".join(shorten(line) for line in readme_lines())
    proc = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
