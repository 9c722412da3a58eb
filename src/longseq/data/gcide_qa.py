"""Long-document extractive QA on real text: GCIDE dictionary entries, one of them asked about.

A document is a run of real entries of the GNU Collaborative International Dictionary of
English (Debian `dict-gcide`), rendered one per line as `Headword: definition`, up to about
`length` characters (thousands to tens of thousands). The question names one headword of the
document ("Cockle?"); the answer is that entry's definition, a span of the document.
Entries are drawn at random from the split's own headwords (each headword lands in one split
only), the asked entry at a random place, so the answer's distance from the question varies
from a few tokens to the whole document.

Definitions: the first sense of a main entry (its first line is `Headword \\pron\\, ...`),
i.e. the first line that starts outside the header's [etymology] brackets, up to the source
tag (`[1913 Webster]`); braces removed, whitespace collapsed, trailing `--Author.` citations
and `[Obs.]`-style tags dropped; kept when 20-300 characters and starting with a capital.

Files (`longseq data gcide-qa --out DIR`): `train.jsonl`, `val.jsonl`, `test.jsonl`, one
example per line

    {"id": ..., "question": "Cockle?", "context": "...", "headword": "Cockle",
     "answer_start": <character offset in context>, "answer_text": "To cause to ..."}

plus `tokenizer.json` (a byte-level BPE trained on the train split's text, so headwords are
one or a few tokens), `stats.json` and `README.md`.

`QADataset` turns an example into `[cls] question [sep] context` token ids with the answer's
first and last token (`start_positions`, `end_positions`) and `global_attention_mask` on
`[cls] question [sep]` (the Longformer paper's QA set-up). Examples whose answer falls beyond
`max_length` tokens are left out, and counted; for scoring (`keep_unreachable=True`) they are
kept, cut to `max_length`, with no answer position (-1): a truncated model is scored on the
same examples as a long one, and misses what it cannot see. Each item also records where the
answer lies: `distance` (context tokens before its first token) and `end` (its last token's
position in the whole input, past `max_length` where out of reach).

Scores (`span_scores`): exact match (predicted first and last token equal the answer's) and
F1 over the tokens of the two spans, the best span of at most `max_answer` tokens that
starts in the context; per example, so compare can split them by distance.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import sys
from pathlib import Path
from typing import Any

from longseq.data.real import SourceNotFoundError, find_gcide
from longseq.data.tokenizers import load_tokenizer

SPLITS = ("train", "val", "test")
SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(text: str) -> int:
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def definition(entry: str, headword: str) -> str | None:
    """The first definition of a main entry (see the module docstring), or None."""
    lines = entry.split("\n")
    if not lines or not lines[0].startswith(headword + " \\"):
        return None
    depth, out, started = 0, [], False
    for i, line in enumerate(lines):
        s = line.strip()
        if i > 0 and not s:
            if started:
                break
            continue
        if i > 0 and depth <= 0 and not started and not s.startswith("["):
            started = True
        if started:
            if s.startswith("["):
                break
            out.append(s)
        depth += line.count("[") - line.count("]")
    text = re.sub(r"\s+", " ", re.sub(r"[{}]", "", " ".join(out))).strip()
    text = re.sub(r"(\s*(--[A-Z][^\[]*|\[[^\]]*\]))+\s*$", "", text).strip()
    ok = 20 <= len(text) <= 300 and text[:1].isupper() and not re.search(r"[\\<>]", text)
    return text if ok else None


def read_entries(source: str | Path | None = None) -> list[tuple[str, str]]:
    """(headword, definition) of every usable main entry, one per headword, in index order."""
    path = find_gcide(source, command="gcide-qa")
    raw = path.read_bytes()
    data = gzip.decompress(raw) if path.suffix == ".dz" else raw
    index = path.parent / "gcide.index"
    if not index.is_file():
        raise SourceNotFoundError(f"{index}: missing beside {path.name} (the dictd index)")
    seen_offsets: set[int] = set()
    seen_words: set[str] = set()
    out = []
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or parts[0].startswith("00-"):
            continue
        word, offset, size = parts[0], _b64(parts[1]), _b64(parts[2])
        if offset in seen_offsets or word.lower() in seen_words:
            continue
        seen_offsets.add(offset)
        text = data[offset : offset + size].decode("utf-8", errors="replace")
        d = definition(text, word)
        if d is not None and ":" not in word and "\n" not in word:
            seen_words.add(word.lower())
            out.append((word, d))
    return out


def render(headword: str, text: str) -> str:
    return f"{headword}: {text}\n"


def make_examples(
    entries: list[tuple[str, str]], count: int, length: int, rng: random.Random, split: str
) -> list[dict[str, Any]]:
    """`count` documents of about `length` characters, each asking about one of its entries."""
    out = []
    for i in range(count):
        target = rng.randrange(len(entries))
        chosen = [target]
        size = len(render(*entries[target]))
        while size < length and len(chosen) < len(entries):
            j = rng.randrange(len(entries))
            if j not in chosen:
                chosen.append(j)
                size += len(render(*entries[j]))
        others = chosen[1:]
        rng.shuffle(others)
        at = rng.randint(0, len(others))
        order = [*others[:at], target, *others[at:]]
        context, answer_start = "", -1
        for j in order:
            if j == target:
                answer_start = len(context) + len(entries[j][0]) + 2
            context += render(*entries[j])
        word, text = entries[target]
        assert context[answer_start : answer_start + len(text)] == text
        out.append(
            {
                "id": f"{split}-{i}",
                # the headword alone, as it starts its line in the document: the same tokens
                # in both places ("What is X?" would give BPE's space-prefixed " X" instead)
                "question": f"{word}?",
                "headword": word,
                "context": context,
                "answer_start": answer_start,
                "answer_text": text,
            }
        )
    return out


def train_tokenizer(texts: list[str], vocab_size: int, path: Path) -> None:
    """A byte-level BPE (Hugging Face `tokenizers`) trained on `texts`, with BERT's specials."""
    # Hugging Face `tokenizers` (heavy) only when a tokenizer is trained
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(path))


def build(
    out: str | Path,
    source: str | Path | None = None,
    *,
    length: int = 4_000,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    vocab_size: int = 8_192,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the three splits, tokenizer.json, stats.json and README.md to `out`."""
    sizes = sizes or {"train": 6_000, "val": 300, "test": 500}
    if length < 200:
        raise ValueError(f"--length must be at least 200 characters, got {length}")
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"split sizes must be positive, got {sizes}")
    entries = read_entries(source)
    if len(entries) < 100:
        raise ValueError(f"only {len(entries)} usable GCIDE entries found; is the source whole?")
    rng = random.Random(seed)
    order = list(range(len(entries)))
    rng.shuffle(order)
    cut = [int(len(order) * 0.9), int(len(order) * 0.95)]
    pools = {
        "train": [entries[i] for i in order[: cut[0]]],
        "val": [entries[i] for i in order[cut[0] : cut[1]]],
        "test": [entries[i] for i in order[cut[1] :]],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"entries": {s: len(p) for s, p in pools.items()}, "splits": {}}
    examples = {}
    for split in SPLITS:
        if progress:
            print(f"gcide-qa: {sizes[split]:,} {split} documents", file=sys.stderr)
        examples[split] = make_examples(pools[split], sizes[split], length, rng, split)
    texts = [ex["question"] + "\n" + ex["context"] for ex in examples["train"]]
    train_tokenizer(texts[:2000], vocab_size, out / "tokenizer.json")

    tok = load_tokenizer(out / "tokenizer.json")
    for split in SPLITS:
        tmp = out / f"{split}.jsonl.tmp"
        with tmp.open("w", encoding="utf-8") as f:
            for ex in examples[split]:
                f.write(json.dumps(ex, ensure_ascii=False) + "\n")
        tmp.replace(out / f"{split}.jsonl")
        sample = examples[split][:200]
        lengths = sorted(len(tok.encode(ex["question"] + ex["context"])) for ex in sample)
        stats["splits"][split] = {
            "examples": len(examples[split]),
            "characters_mean": sum(len(ex["context"]) for ex in examples[split])
            // len(examples[split]),
            "tokens_p50": lengths[len(lengths) // 2],
            "tokens_max": lengths[-1],
        }
    stats |= {"length": length, "seed": seed, "vocab_size": tok.vocab_size, "source": str(source)}
    (out / "stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    (out / "README.md").write_text(_readme(stats))
    return stats


def _readme(stats: dict[str, Any]) -> str:
    s = stats["splits"]
    return f"""# GCIDE long-document QA (longseq data gcide-qa)

Documents of about {stats["length"]:,} characters of real GCIDE dictionary entries, one per
line as `Headword: definition`; the question "HEADWORD?" names one of them and the
answer is its definition (a span of the document). Headwords are split 90/5/5 between
train / val / test ({stats["entries"]["train"]:,} / {stats["entries"]["val"]:,} /
{stats["entries"]["test"]:,} entries); {s["train"]["examples"]:,} / {s["val"]["examples"]:,} /
{s["test"]["examples"]:,} documents (seed {stats["seed"]}). About {s["train"]["tokens_p50"]}
tokens per question + document with tokenizer.json (byte-level BPE, {stats["vocab_size"]:,}
ids, trained on the train split). Source: the GNU Collaborative International Dictionary of
English (GPL), Debian package dict-gcide. Format: `longseq/data/gcide_qa.py`.
"""


# ----------------------------------------------------------------------------- model inputs
class QADataset:
    """`[cls] question [sep] context` ids, answer tokens, global mask on the question."""

    def __init__(
        self, path: str | Path, tokenizer: Any, max_length: int, keep_unreachable: bool = False
    ) -> None:
        self.path = Path(path)
        self.tokenizer, self.max_length = tokenizer, max_length
        self.keep_unreachable = keep_unreachable
        self.items: list[dict[str, Any]] = []
        self.dropped = 0
        with self.path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    ex = json.loads(line)
                    item = self._encode(ex)
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{self.path}:{number}: not a QA example ({e})") from None
                if item is None:
                    self.dropped += 1
                else:
                    self.items.append(item)
        if not self.items:
            raise ValueError(
                f"{self.path}: no example's answer fits in data.max_length={max_length} tokens"
            )
        self.lengths = [len(it["input_ids"]) for it in self.items]

    def _encode(self, ex: dict[str, Any]) -> dict[str, Any] | None:
        tok = self.tokenizer
        context, start = ex["context"], int(ex["answer_start"])
        end = start + len(ex["answer_text"])
        if context[start:end] != ex["answer_text"]:
            raise ValueError("answer_text is not context[answer_start:...]")
        q = tok.encode(ex["question"])
        ids, offsets = tok.encode_with_offsets(context)
        head = [tok.cls_id, *q, tok.sep_id]
        room = self.max_length - len(head)
        if room <= 0:
            raise ValueError(f"the question alone takes {len(head)} >= max_length tokens")
        first = next((i for i, (a, b) in enumerate(offsets) if b > start), None)
        last = max((i for i, (a, _b) in enumerate(offsets) if a < end), default=None)
        if first is None or last is None:
            return None
        reachable = last < room
        if not reachable and not self.keep_unreachable:
            return None
        return {
            "input_ids": head + ids[:room],
            "start_positions": len(head) + first if reachable else -1,
            "end_positions": len(head) + last if reachable else -1,
            "global_attention_mask": [1] * len(head) + [0] * min(room, len(ids)),
            "distance": first,  # context tokens between the question and the answer
            "end": len(head) + last,  # the answer's last token in the whole input
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # torch on first use: `longseq data` writes and reads files without it
        import torch

        it = self.items[i]
        return {
            "input_ids": torch.tensor(it["input_ids"]),
            "global_attention_mask": torch.tensor(it["global_attention_mask"]),
            "start_positions": torch.tensor(it["start_positions"]),
            "end_positions": torch.tensor(it["end_positions"]),
        }


def best_spans(start: Any, end: Any, context_from: Any, max_answer: int) -> Any:
    """(B, 2): the span (s, e), s <= e < s + max_answer, s >= context_from, that maximises
    start[s] + end[e]. start, end: (B, N) logits; context_from: (B,) first context token.
    Scores only the N x max_answer allowed spans (never N x N)."""
    # torch on first use: `longseq data` writes and reads files without it
    import torch

    b, n = start.shape
    w = min(max_answer, n)
    ends = torch.cat([end.float(), end.new_full((b, w - 1), float("-inf"))], 1)
    scores = start.float()[:, :, None] + ends.unfold(1, w, 1)  # [b, s, j]: span (s, s + j)
    before = torch.arange(n, device=start.device)[None, :] < context_from[:, None]
    flat = scores.masked_fill(before[:, :, None], float("-inf")).flatten(1).argmax(-1)
    first = flat // w
    return torch.stack([first, first + flat % w], -1)


def span_scores(pred: Any, gold: Any) -> tuple[Any, Any]:
    """Per example: exact match (0/1) and token F1 of predicted (s, e) against gold (s, e)."""
    # torch on first use: `longseq data` writes and reads files without it
    import torch

    ps, pe = pred[:, 0], pred[:, 1]
    gs, ge = gold[:, 0], gold[:, 1]
    overlap = (torch.minimum(pe, ge) - torch.maximum(ps, gs) + 1).clamp_min(0).float()
    p_len, g_len = (pe - ps + 1).float(), (ge - gs + 1).float()
    f1 = torch.where(overlap > 0, 2 * overlap / (p_len + g_len), torch.zeros_like(overlap))
    exact = ((ps == gs) & (pe == ge)).float()
    return exact, f1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--source",
        help="the dict-gcide files (an extracted .deb, or the folder of gcide.dict.dz and "
        "gcide.index); default: the installed package",
    )
    p.add_argument("--length", type=int, default=4_000, help="characters per document (4000)")
    p.add_argument("--train", type=int, default=6_000)
    p.add_argument("--val", type=int, default=300)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=8_192, help="BPE vocabulary (8192)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    try:
        stats = build(
            args.out,
            args.source,
            length=args.length,
            sizes={"train": args.train, "val": args.val, "test": args.test},
            seed=args.seed,
            vocab_size=args.vocab_size,
            progress=args.progress,
        )
    except (SourceNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = stats["splits"]
    print(
        f"gcide-qa: {s['train']['examples']:,} / {s['val']['examples']:,} / "
        f"{s['test']['examples']:,} documents, about {s['train']['tokens_p50']} tokens each "
        f"(longest of a sample: {s['train']['tokens_max']})"
    )
    print(f"wrote {args.out} (see README.md, stats.json)")
    return 0


__all__ = [
    "QADataset",
    "best_spans",
    "build",
    "definition",
    "make_examples",
    "read_entries",
    "span_scores",
]
