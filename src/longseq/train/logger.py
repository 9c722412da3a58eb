"""What a run reports: JSON lines, TensorBoard, and a progress bar (rank 0 only).

`log.jsonl` holds one object per line, `"kind"` saying which:

    {"kind": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"}
    {"kind": "eval", "step", "split", "loss", <task metrics>, "elapsed"}
    {"kind": "info", "step", "message"}

`loss` and `grad_norm` of a train line are means over the steps since the previous line;
`tokens_per_s` counts real (non-padding) tokens of all processes per second of training
(evaluation and saving excluded); `elapsed` is the run's training time in seconds, resumed
runs included. On resume, lines after the checkpoint's step are dropped (they are redone).
TensorBoard scalars go to `OUT/tensorboard` as `train/loss`, `val/accuracy`, ...

With `progress` on, each validation also prints a line to stdout; on a terminal a bar shows
the steps, and without one (a log file, a pipe, a batch job) a train line is printed every
tenth of the run instead, so such a run is not silent between its first and last lines.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

LOG_NAME = "log.jsonl"


class RunLogger:
    def __init__(
        self,
        out: Path,
        *,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        total_steps: int,
        start_step: int,
    ) -> None:
        self.enabled = enabled
        self.path = out / LOG_NAME
        self._tb = None
        self._bar = None
        self._progress, self._total = progress, total_steps
        # without a terminal: a train line per tenth of the run (the first one at once)
        self._lines_every = max(1, total_steps // 10) if not sys.stderr.isatty() else 0
        self._next_line = 0
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        self._truncate(start_step)
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(out / "tensorboard"), purge_step=start_step + 1)
            except Exception as e:  # an import or version problem must not stop training
                warnings.warn(f"TensorBoard logging is off: {e}", stacklevel=2)
        if progress and sys.stderr.isatty():
            self._bar = tqdm(
                total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True
            )

    def _truncate(self, step: int) -> None:
        """Keep only the lines up to `step` (all of them for a fresh run: step 0 drops all)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the interruption
            if record.get("step", 0) <= step and step > 0:
                keep.append(line)
        self.path.write_text("".join(k + "\n" for k in keep), encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        self._echo(record)
        if self._tb is not None and record["kind"] in ("train", "eval"):
            prefix = "train" if record["kind"] == "train" else record["split"]
            for key, value in record.items():
                skip = key in ("kind", "step", "split", "epoch")
                if not skip and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

    def _echo(self, record: dict[str, Any]) -> None:
        """Validation lines, and train lines when there is no bar (the test split is left to
        the summary that ends the run)."""
        if not self._progress:
            return
        if record["kind"] == "eval" and record["split"] == "val":
            self._print(f"step {record['step']} val: {_numbers(record)}")
        elif record["kind"] == "train" and self._lines_every and record["step"] >= self._next_line:
            self._next_line = (record["step"] // self._lines_every + 1) * self._lines_every
            self._print(
                f"step {record['step']}/{self._total}: loss {record['loss']:.4f}, "
                f"lr {record['lr']:.2e}, {record['tokens_per_s']:,.0f} tokens/s, "
                f"{record['elapsed']:.0f} s"
            )

    def _print(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def step(self, n: int = 1, **postfix: Any) -> None:
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def message(self, text: str, step: int) -> None:
        """A line for the terminal (above the bar) and the log."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)
        self.write({"kind": "info", "step": step, "message": text})

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()


def _numbers(record: dict[str, Any]) -> str:
    """`loss 0.6931, accuracy 0.5000`: an eval record's metrics."""
    skip = ("kind", "split", "step", "elapsed")
    return ", ".join(
        f"{k} {v:.4f}" for k, v in record.items() if k not in skip and isinstance(v, float)
    )


__all__ = ["LOG_NAME", "RunLogger"]
