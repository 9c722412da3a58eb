"""`longseq bench generate`: decoding time and peak memory of a causal LM at long contexts,
longseq's mechanisms against transformers' `generate` on the same weights.

For each context length n and each contender, one fresh process (`longseq.forkserver`, so
that no allocator cache from an earlier row hides memory) loads the model, runs a warm-up
generation of a few tokens, then greedy-decodes `new_tokens` tokens after an n-token prompt,
with the same threads and dtype for everyone, and records:

- `prefill_s`: the time to the first new token (the prompt's forward);
- `per_token_ms`: the median (and min) gap between consecutive new tokens, i.e. the decoding
  time per token after the prefill, apart from it;
- `peak_mb`: the growth of the resident set's high-water mark over the whole generation
  (prefill included), above what the loaded model already holds (memory freed while loading
  is given back to the system first, so that the generation cannot reuse it unseen).

Contenders (`CONTENDERS`): longseq with a Longformer window and the first `sinks` tokens
global (attention sinks; its cache a ring of constant size; `sinks-cache`: the sinks scored at
cache positions, StreamingLLM's rule), the window alone, full attention
(a growing key/value cache), each made from the model with `longseq.convert.longify` for the
longest context; and transformers' `LlamaForCausalLM.generate` (SDPA, DynamicCache) with the
same weights (a Llama-architecture model). The prompt is random token ids (seeded: decoding
time does not depend on the text), and no end token stops a row early.

Rows run context by context with every contender in turn (interleaved: a machine whose load
changes affects them alike), `repeats` times; results.jsonl gets one line per row as it
finishes, so `resume` skips what was measured (and runs skipped or failed rows again). Dense
contenders above `max_dense_context` are not run: a dense prefill costs O(n^2) (SmolLM2 at 32K
tokens: about 4e13 FLOPs of attention, many minutes on 2 cores) and the row says so.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from longseq.bench.attention import reset_peak_rss
from longseq.forkserver import ChildError, Server

MIB = 2**20
CONTENDERS: dict[str, str] = {
    "sinks": "longseq: Longformer window + attention sinks (ring cache)",
    "sinks-cache": "longseq: the same, sinks at cache positions (StreamingLLM's rule)",
    "window": "longseq: Longformer window, no sinks (ring cache)",
    "dense": "longseq: full attention (key/value cache)",
    "hf-dense": "transformers generate: full attention (DynamicCache)",
}
DENSE = ("dense", "hf-dense")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class GenerateBench:
    model: str
    out: str
    contexts: list[int] = field(default_factory=lambda: [1024, 4096, 16384, 32768])
    contenders: list[str] = field(default_factory=lambda: ["sinks", "hf-dense", "dense"])
    new_tokens: int = 32
    window: int = 2048
    sinks: int = 4
    threads: int = 2
    dtype: str = "float32"
    repeats: int = 1
    max_dense_context: int = 16384
    timeout: float = 3600.0
    resume: bool = False


# ------------------------------------------------------------------------------ contenders
def transformers_llama(model: Any) -> Any:
    """transformers' LlamaForCausalLM holding a longseq Llama-architecture model's weights
    (the inverse of `longseq.convert.llama`'s name table), in eval mode, SDPA attention."""
    import transformers

    from longseq.convert.llama import llama_names

    c = model.config
    if not (c.norm_type == "rms" and c.feed_forward == "gated" and c.position == "rotary"):
        raise ValueError(
            "hf-dense needs a Llama-architecture model (RMSNorm, gated feed-forward, rotary): "
            f"got norm_type={c.norm_type!r}, feed_forward={c.feed_forward!r}, "
            f"position={c.position!r}"
        )
    hf_config = transformers.LlamaConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=c.kv_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_length,
        rms_norm_eps=c.layer_norm_eps,
        hidden_act=c.activation,
        attention_bias=c.bias,
        mlp_bias=c.feed_forward_bias,
        tie_word_embeddings=c.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
        bos_token_id=None,
        eos_token_id=None,
        attn_implementation="sdpa",
    )
    hf_config.rope_parameters = {"rope_type": "default", "rope_theta": c.rotary_base}
    names = llama_names(c, "model.")
    if not c.tie_word_embeddings:
        names["lm_head.decoder.weight"] = "lm_head.weight"
    hf = transformers.LlamaForCausalLM(hf_config)
    state = model.state_dict()
    hf.load_state_dict({theirs: state[ours] for ours, theirs in names.items()}, strict=False)
    hf.tie_weights()
    return hf.to(next(model.parameters()).dtype).eval()


def build(cfg: GenerateBench, contender: str, length: int) -> Any:
    """The contender's model for sequences of up to `length` tokens."""
    from longseq.convert import longify
    from longseq.models import from_pretrained

    model = from_pretrained(cfg.model).to(DTYPES[cfg.dtype]).eval()
    longest = max(length, model.config.max_length)
    if contender == "hf-dense":
        return transformers_llama(model)
    if contender == "dense":
        return longify(model, longest, "full") if longest > model.config.max_length else model
    sinks: dict[str, Any] = {}
    if contender.startswith("sinks") and cfg.sinks:
        sinks["global_tokens"] = cfg.sinks
        if contender == "sinks-cache":
            sinks["sink_positions"] = "cache"
    return longify(model, longest, "longformer", window=cfg.window, **sinks)


class _Stamps:
    """Times of the new tokens: a longseq streamer (called once per step) and a transformers
    one (`put` gets the prompt first, then each new token; `end` at the end)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prompt_seen = False

    def __call__(self, tokens: Any) -> None:
        self.times.append(time.perf_counter())

    def put(self, value: Any) -> None:
        if self.prompt_seen:
            self.times.append(time.perf_counter())
        self.prompt_seen = True

    def end(self) -> None:
        pass


def _generate(model: Any, contender: str, ids: torch.Tensor, new: int, stamps: Any) -> None:
    if contender == "hf-dense":
        model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new,
            do_sample=False,
            streamer=stamps,
            pad_token_id=0,
        )
    else:
        model.generate(ids, new, streamer=stamps)


def _return_freed_memory() -> None:
    """Give the memory freed so far (building the model: longify drops the source's copy)
    back to the system, so that the generation's allocations grow the resident set instead of
    reusing those pages unseen (glibc's malloc_trim; a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def measure(cfg_dict: dict[str, Any], contender: str, n: int) -> dict[str, Any]:
    """One row, in a fresh process: prefill time, per-token time, peak memory growth."""
    cfg = GenerateBench(**cfg_dict)
    torch.set_num_threads(cfg.threads)
    model = build(cfg, contender, n + cfg.new_tokens)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(n)
    with torch.no_grad():
        _generate(model, contender, torch.randint(0, vocab, (1, 8), generator=g), 2, _Stamps())
    ids = torch.randint(0, vocab, (1, n), generator=g)
    gc.collect()
    _return_freed_memory()
    growth = reset_peak_rss()
    stamps = _Stamps()
    start = time.perf_counter()
    with torch.no_grad():
        _generate(model, contender, ids, cfg.new_tokens, stamps)
    peak = growth()
    times = stamps.times
    if len(times) != cfg.new_tokens:
        raise RuntimeError(f"{contender} made {len(times)} tokens, not {cfg.new_tokens}")
    gaps = [1000 * (b - a) for a, b in itertools.pairwise(times)]
    return {
        "prefill_s": times[0] - start,
        "per_token_ms": statistics.median(gaps),
        "per_token_min_ms": min(gaps),
        "peak_mb": max(peak, 0) / MIB,
    }


# ------------------------------------------------------------------------------ the run
def _key(r: dict[str, Any]) -> tuple[str, int, int]:
    return r["contender"], r["context"], r["repeat"]


def run(cfg: GenerateBench) -> list[dict[str, Any]]:
    """Every (context, repeat, contender) row not done yet; returns every record."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    # resume keeps the measured rows; skipped and failed ones run again (a larger
    # --max-dense-context, a longer --timeout)
    records = (
        [r for r in load(path) if r["status"] == "ok"] if cfg.resume and path.is_file() else []
    )
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    done = {_key(r) for r in records}
    server = Server(["torch", "transformers", "longseq.bench.generate"], quiet=True)
    try:
        for n, rep, contender in itertools.product(
            cfg.contexts, range(cfg.repeats), cfg.contenders
        ):
            if (contender, n, rep) in done:
                continue
            row: dict[str, Any] = {
                "contender": contender,
                "context": n,
                "repeat": rep,
                "new_tokens": cfg.new_tokens,
                "threads": cfg.threads,
                "dtype": cfg.dtype,
                "window": cfg.window,
                "sinks": cfg.sinks if contender.startswith("sinks") else 0,
                "load_average": os.getloadavg()[0],
            }
            if contender in DENSE and n > cfg.max_dense_context:
                row.update(
                    status="skipped",
                    reason=f"dense prefill of {n} tokens is O(n^2): above --max-dense-context "
                    f"{cfg.max_dense_context}",
                )
            else:
                try:
                    row.update(status="ok", **server.call(measure, asdict(cfg), contender, n,
                                                          timeout=cfg.timeout))  # fmt: skip
                except ChildError as e:
                    row.update(status="error", reason=str(e).splitlines()[0][:300])
            records.append(row)
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            (out / "table.md").write_text(table(records))
    finally:
        server.close()
    (out / "table.md").write_text(table(records))
    return records


def load(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------------------ report
def _median(records: list[dict[str, Any]], contender: str, n: int, key: str) -> float | None:
    values = [
        r[key]
        for r in records
        if r["contender"] == contender and r["context"] == n and r["status"] == "ok"
    ]
    return statistics.median(values) if values else None


def _f(v: float | None, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(records: list[dict[str, Any]]) -> str:
    """Per context and contender: per-token ms, prefill s, peak MB (medians over repeats);
    then each longseq contender's per-token time over transformers' at the same context and
    over its own at the shortest context."""
    contexts = sorted({r["context"] for r in records})
    contenders = [c for c in CONTENDERS if any(r["contender"] == c for r in records)]
    lines = [
        "| contender | context | per-token ms (median) | per-token ms (min) | prefill s "
        "| peak MB | status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for n in contexts:
        for c in contenders:
            rows = [r for r in records if r["contender"] == c and r["context"] == n]
            if not rows:
                continue
            status = ", ".join(sorted({r["status"] for r in rows}))
            lines.append(
                f"| {c} | {n} | {_f(_median(records, c, n, 'per_token_ms'))} "
                f"| {_f(_median(records, c, n, 'per_token_min_ms'))} "
                f"| {_f(_median(records, c, n, 'prefill_s'))} "
                f"| {_f(_median(records, c, n, 'peak_mb'), 0)} | {status} |"
            )
    ours = [c for c in contenders if c != "hf-dense"]
    if ours and contexts:
        first = contexts[0]
        lines += [
            "",
            "| contender | context | per-token vs transformers (same context) "
            f"| per-token vs own at {first} |",
            "|---|---:|---:|---:|",
        ]
        for c in ours:
            base = _median(records, c, first, "per_token_ms")
            for n in contexts:
                t = _median(records, c, n, "per_token_ms")
                hf = _median(records, "hf-dense", n, "per_token_ms")
                vs_hf = _f(t / hf, 2) + "x" if t is not None and hf else "–"
                vs_own = _f(t / base, 2) + "x" if t is not None and base else "–"
                lines.append(f"| {c} | {n} | {vs_hf} | {vs_own} |")
    skipped = sorted({r["reason"] for r in records if r["status"] != "ok" and r.get("reason")})
    return "\n".join(lines + [""] + [f"- {s}" for s in skipped]) + "\n"


__all__ = ["CONTENDERS", "GenerateBench", "build", "measure", "run", "table", "transformers_llama"]
