"""Model benchmark: whole models, ours against Hugging Face's with the same weights and dense SDPA.

A preset builds a Hugging Face model from a config (random weights, seeded: nothing is
downloaded) or `hf_dir` names a local Hugging Face folder; `longseq.convert` turns it into
ours. The rows, all with the same weights:

- `longseq`: the converted model (its own mechanism, or `attention` with `attention_options`
  swapped in: any mechanism; parameters the new mechanism adds keep their seeded init);
- `longseq-flex` (`flex=True`): the same with `backend="flex"` (FlexAttention; on CPU forward
  only: its fwd+bwd is recorded as skipped with FlexAttention's reason);
- `full`: the converted model with full attention (`scaled_dot_product_attention`: FlashAttention
  on CUDA), the dense baseline;
- `hf`: the Hugging Face model itself (the peer).

Measured as `longseq bench attention` measures a layer, with its code (`bench.attention`):
forward (eval, no grad) and forward+backward (train mode, dropout 0, gradients of every
parameter) of `batch` sequences of n random tokens; all rows of a length timed in one process,
round-robin with a rotating order (`time_round_robin`); peak memory in a fresh process per row
and length (`peak_memory`; weights and inputs exist before). The loss: an encoder's summed last
hidden state, a causal LM's next-token loss (the same on both sides). Tokens/s = batch * n /
median time.
"""

from __future__ import annotations

import gc
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from longseq.attention import flex
from longseq.bench import attention as ba
from longseq.bench import report
from longseq.forkserver import ChildError, Server

MODES = ba.MODES
ROWS = ("longseq", "longseq-flex", "full", "hf")


def _longformer_base(n: int, layers: int | None) -> nn.Module:
    from transformers import LongformerConfig, LongformerModel

    cfg = LongformerConfig(
        hidden_size=768,
        num_hidden_layers=layers or 12,
        num_attention_heads=12,
        intermediate_size=3072,
        attention_window=512,
        max_position_embeddings=n + 2,  # positions start at padding_idx + 1
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return LongformerModel(cfg, add_pooling_layer=False)


def _bigbird_base(n: int, layers: int | None) -> nn.Module:
    from transformers import BigBirdConfig, BigBirdModel

    cfg = BigBirdConfig(
        hidden_size=768,
        num_hidden_layers=layers or 12,
        num_attention_heads=12,
        intermediate_size=3072,
        attention_type="block_sparse",
        block_size=64,
        num_random_blocks=3,
        max_position_embeddings=max(n, 4096),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BigBirdModel(cfg, add_pooling_layer=False)


def _llama_small(n: int, layers: int | None) -> nn.Module:
    """SmolLM2-135M's shape (docs/pretrained-models notes): grouped-query heads, rotary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=layers or 30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=max(n, 8192),
        rope_theta=100000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    return LlamaForCausalLM(cfg)


# name -> (what it is, builder(n, layers) -> a Hugging Face model)
PRESETS: dict[str, tuple[str, Callable[[int, int | None], nn.Module]]] = {
    "longformer-base": (
        "HF LongformerModel, longformer-base's shape (window 512)",
        _longformer_base,
    ),
    "bigbird-base": (
        "HF BigBirdModel, bigbird-roberta-base's shape (block 64, 3 random)",
        _bigbird_base,
    ),
    "llama-small": (
        "HF LlamaForCausalLM, SmolLM2-135M's shape (causal LM, SDPA)",
        _llama_small,
    ),
}


@dataclass
class ModelBenchConfig:
    model: str = "longformer-base"  # a preset, unless hf_dir or hf_config is given
    hf_dir: str | None = None  # a local Hugging Face folder: its weights
    hf_config: str | None = None  # a Hugging Face config.json: seeded random weights
    layers: int | None = None  # a preset's layer count (None: the model's own)
    attention: str | None = None  # swap this mechanism into the converted model
    attention_options: dict[str, Any] = field(default_factory=dict)
    flex: bool = False
    hf: bool = True
    lengths: list[int] = field(default_factory=lambda: [1024, 4096])
    batch: int = 1
    threads: int = 2
    repeats: int = 3
    warmup: int = 1
    max_repeats: int = 0  # as bench.attention.Config: more rounds while the calls spread
    tolerance: float = 0.25
    dtype: str = "fp32"
    device: str = "cpu"
    max_seconds: float = 300.0  # one forward+backward call
    out: str = "bench-model"
    progress: bool = True
    # memory probes in a fresh process each (CPU: a process keeps what it freed); False, or
    # CUDA (max_memory_allocated is exact in any process): in this one
    isolate: bool = True


@dataclass(frozen=True)
class ModelRow:
    """A row of the table (`time_round_robin` needs its name)."""

    name: str


# --------------------------------------------------------------------------------------------
# Building the models


def hf_model(cfg: ModelBenchConfig, n: int) -> nn.Module:
    """The Hugging Face model (seeded weights; eval mode)."""
    torch.manual_seed(0)
    if cfg.hf_dir:
        from longseq.convert.converters import SUPPORTED
        from longseq.convert.local import load_folder

        model = load_folder(cfg.hf_dir, SUPPORTED)
    elif cfg.hf_config:
        model = _from_config(cfg.hf_config)
    else:
        if cfg.model not in PRESETS:
            raise ValueError(f"unknown model {cfg.model!r}; presets: {', '.join(PRESETS)}")
        model = PRESETS[cfg.model][1](n, cfg.layers)
    return model.to(device=cfg.device, dtype=ba.DTYPES[cfg.dtype]).eval()


def _from_config(path: str) -> nn.Module:
    """A Hugging Face model from a config.json (seeded random weights): the class its
    `architectures` names, else the base model of its type."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch is None:
        return transformers.AutoModel.from_config(config)
    return getattr(transformers, arch)(config)


def with_attention(model: nn.Module, name: str, options: dict[str, Any]) -> nn.Module:
    """`model` (ours) with another mechanism in every layer and the same weights; the
    parameters only the new mechanism has (Longformer's global projections) keep their
    seeded init, and none of the old ones may be left over but the old mechanism's own."""
    from longseq.models import ModelConfig, build_model

    data = {**model.config.to_dict(), "attention": name, "attention_options": options}
    data["layer_attention"] = None
    new = build_model(ModelConfig.from_dict(data), seed=0)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in missing + unexpected if ".attention." not in k]
    if stray:
        raise ValueError(f"weights that do not carry over to {name!r}: {stray[:5]}")
    return new.to(device=next(model.parameters()).device, dtype=next(model.parameters()).dtype)


def build_row(row: str, cfg: ModelBenchConfig, n: int) -> nn.Module:
    """The model of `row` at length n (eval mode)."""
    from longseq.convert import from_huggingface

    peer = hf_model(cfg, n)
    if row == "hf":
        return peer
    ours = from_huggingface(peer)
    del peer
    if row == "full":
        ours = with_attention(ours, "full", {})
    elif cfg.attention:
        ours = with_attention(ours, cfg.attention, cfg.attention_options)
    if row == "longseq-flex":
        c = ours.config
        ours = with_attention(ours, c.attention, {**c.attention_options, "backend": "flex"})
    return ours.eval()


def make_call(model: nn.Module, cfg: ModelBenchConfig, n: int) -> Callable[[Tensor], Tensor]:
    """`fn(_) -> Tensor` on fixed random tokens: an encoder's last hidden state, a causal
    LM's loss (the benchmark sums it for the backward)."""
    gen = torch.Generator().manual_seed(n)
    vocab = _vocab(model)
    ids = torch.randint(4, vocab, (cfg.batch, n), generator=gen).to(cfg.device)
    mask = torch.ones_like(ids)
    if _is_causal_lm(model):
        return lambda _x: model(input_ids=ids, attention_mask=mask, labels=ids).loss
    return lambda _x: model(input_ids=ids, attention_mask=mask).last_hidden_state


def _vocab(model: nn.Module) -> int:
    config = model.config
    return int(getattr(config, "vocab_size", 0) or config.get_text_config().vocab_size)


def _is_causal_lm(model: nn.Module) -> bool:
    arch = getattr(model.config, "architecture", None)  # ours
    return arch == "causal-lm" or type(model).__name__.endswith("ForCausalLM")


def rows(cfg: ModelBenchConfig) -> list[str]:
    return [r for r in ROWS if (r != "hf" or cfg.hf) and (r != "longseq-flex" or cfg.flex)]


# --------------------------------------------------------------------------------------------
# Measuring


def probe(row: str, n: int, cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """(In a fresh process) peak memory and cold time of one forward, then one fwd+bwd."""
    cfg = ModelBenchConfig(**cfg_dict)
    torch.set_num_threads(cfg.threads)
    ba.warm_up(cfg.device)
    model = build_row(row, cfg, n)
    fn = make_call(model, cfg, n)
    dummy = torch.zeros(1, device=cfg.device)
    gc.collect()
    out: dict[str, Any] = {}
    for mode in MODES:
        measure = ba.peak_memory(cfg.device)
        try:
            seconds = ba.call_once(model, fn, dummy, mode, cfg.device)
        except flex.FlexBackwardUnavailable as err:  # CPU flex: forward only
            out[mode] = {"skip": str(err).split(";")[0]}
            continue
        out[mode] = {"peak_bytes": measure(), "seconds": seconds}
    return out


class _Writer:
    def __init__(self, path: Path, common: dict[str, Any]) -> None:
        self.file = path.open("w")
        self.common = common
        self.records: list[dict[str, Any]] = []

    def record(self, row: str, n: int, mode: str, cfg: ModelBenchConfig, **fields: Any) -> None:
        times = fields.get("times") or []
        med = statistics.median(times) if times else None
        rec = {
            "mechanism": row,
            "kind": {"hf": "peer", "full": "baseline"}.get(row, "ours"),
            "compare_to": None,
            "n": n,
            "mode": mode,
            "status": "ok" if med is not None else "skipped",
            "reason": fields.get("reason"),
            "median_ms": med,
            "min_ms": min(times) if times else None,
            "times_ms": times,
            "tokens_per_s": cfg.batch * n / (med / 1e3) if med else None,
            "peak_mb": None if fields.get("peak") is None else fields["peak"] / ba.MIB,
            **self.common,
        }
        self.records.append(rec)
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def describe(cfg: ModelBenchConfig) -> str:
    what = cfg.hf_dir or cfg.hf_config or f"{cfg.model}: {PRESETS[cfg.model][0]}"
    layers = f", {cfg.layers} layers" if cfg.layers else ""
    swap = (
        f"; longseq rows with attention={cfg.attention} {cfg.attention_options}"
        if cfg.attention
        else ""
    )
    return (
        f"{what}{layers}{swap}; batch {cfg.batch}, {cfg.dtype}, {cfg.device}, {cfg.threads} "
        f"threads, median of {cfg.repeats} (+{cfg.warmup} warm-up), lengths "
        f"{', '.join(map(str, cfg.lengths))}; rows: {', '.join(rows(cfg))}"
    )


def run(cfg: ModelBenchConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure every row at every length; write results.jsonl, table.md, plot.png."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    log("model benchmark: " + describe(cfg))
    common = {
        "model": cfg.hf_dir or cfg.hf_config or cfg.model,
        "layers": cfg.layers,
        "attention": cfg.attention,
        "attention_options": cfg.attention_options,
        "batch": cfg.batch,
        "dtype": cfg.dtype,
        "device": cfg.device,
        "threads": cfg.threads,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "machine": ba.machine_info(cfg.device),
    }
    names = rows(cfg)
    server = Server(["longseq.bench.model", "longseq.convert", "transformers"], quiet=True)
    writer = _Writer(out / "results.jsonl", common)
    gave_up: dict[str, str] = {}
    bar = tqdm(
        total=len(cfg.lengths) * len(names) * (1 + cfg.warmup + cfg.repeats),
        disable=not cfg.progress,
        desc="bench model",
        file=sys.stderr,
    )
    try:
        for n in sorted(set(cfg.lengths)):
            probes = _probe_length(server, names, n, cfg, gave_up, writer, bar)
            _time_length(probes, n, cfg, writer, bar)
            gc.collect()
    finally:
        writer.close()
        bar.close()
        server.close()
    (out / "table.md").write_text(table(writer.records, describe(cfg)))
    report.plot(writer.records, out / "plot.png", title=f"Whole model: {describe(cfg)}")
    return writer.records


def _probe_length(
    server: Server,
    names: list[str],
    n: int,
    cfg: ModelBenchConfig,
    gave_up: dict[str, str],
    writer: _Writer,
    bar: Any,
) -> dict[str, dict[str, Any]]:
    probes: dict[str, dict[str, Any]] = {}
    for row in names:
        bar.set_description(f"n={n} memory {row}")
        if row in gave_up:
            for mode in MODES:
                writer.record(row, n, mode, cfg, reason=f"skipped after: {gave_up[row]}")
            bar.update(1 + cfg.warmup + cfg.repeats)
            continue
        try:
            if cfg.isolate and cfg.device == "cpu":
                res = server.call(probe, row, n, asdict(cfg), timeout=4 * cfg.max_seconds + 120)
            else:
                res = probe(row, n, asdict(cfg))
        except ChildError as err:
            gave_up[row] = f"{ba._first_line(str(err))} at n={n}"
            for mode in MODES:
                writer.record(row, n, mode, cfg, reason=ba._first_line(str(err)))
            bar.update(1 + cfg.warmup + cfg.repeats)
            continue
        slow = [m for m in MODES if res[m].get("seconds", 0) > cfg.max_seconds]
        if slow:
            gave_up[row] = f"one {slow[-1]} call took {res[slow[-1]]['seconds']:.0f} s at n={n}"
        probes[row] = res
        bar.update(1)
    return probes


def _time_length(
    probes: dict[str, dict[str, Any]], n: int, cfg: ModelBenchConfig, writer: _Writer, bar: Any
) -> None:
    """Every probed row at n in this process, round-robin; a mode its probe skipped (CPU
    flex's fwd+bwd) is recorded as skipped and not timed."""
    models, modes = [], {}
    for row, res in probes.items():
        modes[row] = tuple(m for m in MODES if "skip" not in res[m])
        model = build_row(row, cfg, n)
        models.append((ModelRow(row), model, make_call(model, cfg, n)))
    dummy = torch.zeros(1, n, device=cfg.device)  # (what the progress bar reads n from)
    times, failed = ba.time_round_robin(models, dummy, cfg, bar, modes)  # type: ignore[arg-type]
    for row, res in probes.items():
        for mode in MODES:
            if "skip" in res[mode]:
                writer.record(row, n, mode, cfg, reason=res[mode]["skip"])
            elif row in failed:
                writer.record(row, n, mode, cfg, reason=failed[row])
            else:
                peak = res[mode]["peak_bytes"]
                writer.record(row, n, mode, cfg, times=times[row][mode], peak=peak)


# --------------------------------------------------------------------------------------------
# Report


def table(records: list[dict[str, Any]], settings: str = "") -> str:
    """Times, tokens/s, memory, and each row's time over longseq's, as markdown."""
    names = list(dict.fromkeys(r["mechanism"] for r in records))
    lengths = sorted({r["n"] for r in records})
    parts = ["# Model benchmark", "", "## Settings", "", settings, ""]
    for mode in MODES:
        cells = {
            (r["mechanism"], r["n"]): r
            for r in records
            if r["mode"] == mode and r["status"] == "ok"
        }
        parts += [f"## {mode}: median ms, tokens/s, peak MiB", ""]
        head = " | ".join(f"n={n} ms | tokens/s | MiB" for n in lengths)
        parts += [f"| row | {head} |", "|---|" + "---:|" * (3 * len(lengths))]
        for m in names:
            line = [_cell(cells.get((m, n))) for n in lengths]
            parts.append(f"| {m} | " + " | ".join(line) + " |")
        parts += ["", f"Time over longseq's ({mode}; above 1: longseq is faster):", ""]
        for m in names:
            if m == "longseq":
                continue
            ratios = [_over(cells, m, n) for n in lengths]
            parts.append(f"- {m}: " + ", ".join(ratios))
        parts.append("")
    skipped = [r for r in records if r["status"] == "skipped"]
    if skipped:
        parts += ["## Skipped", ""]
        parts += [f"- {r['mechanism']} {r['mode']} n={r['n']}: {r['reason']}" for r in skipped]
    return "\n".join(parts) + "\n"


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "– | – | –"
    return f"{r['median_ms']:.0f} | {r['tokens_per_s']:.0f} | {r['peak_mb']:.0f}"


def _over(cells: dict[tuple[str, int], dict[str, Any]], m: str, n: int) -> str:
    a, b = cells.get((m, n)), cells.get(("longseq", n))
    return f"n={n}: " + ("–" if not (a and b) else f"{a['median_ms'] / b['median_ms']:.2f}x")


__all__ = ["PRESETS", "ModelBenchConfig", "ModelRow", "build_row", "run", "table", "with_attention"]
