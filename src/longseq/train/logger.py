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
        if self._tb is not None and record["kind"] in ("train", "eval"):
            prefix = "train" if record["kind"] == "train" else record["split"]
            for key, value in record.items():
                skip = key in ("kind", "step", "split", "epoch")
                if not skip and isinstance(value, float) and math.isfinite(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, record["step"])

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


__all__ = ["LOG_NAME", "RunLogger"]
