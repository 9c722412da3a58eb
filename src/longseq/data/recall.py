"""Multi-query associative recall by distance: what an attention pattern can reach decides it.

A sequence of `length` tokens is filler (random tokens from a small vocabulary) with `pairs`
key->value pairs and one query per pair (Arora et al. 2023, "Zoology", MQAR, in the one-hop
form of shared/notes/recall-probes.md: key and value fused into one token, so one attention
hop from the query to its pair answers it):

    position p:  token key_k carrying value v   (the pair)
    position q:  token key_k carrying no value  (the query), q = p + d, d >= 1

The model labels every query position with the value of the pair whose key it repeats
(`values` classes, chance 1/values); other positions carry no label. Keys are distinct within
a sequence; values are uniform. The distance d of each query is drawn by first choosing one of
the `distances` ranges (uniformly), then d uniformly in it, so every range gets about the same
number of queries, and compare can report accuracy per range (within a sliding window's reach,
beyond it, far).

Tokens: 0 [pad], 1 [cls] (unused; every tokenizer has one), 2..F+1 the filler tokens,
F+2..F+K+1 the keys. The value travels in `token_type_ids`: 0 for filler and queries, 1 + v for
a pair carrying value v (the model adds a learned embedding per type, as BERT's segments).

File format (`longseq data recall`): one JSON object per line,

    {"input_ids": [...length ints...],
     "pairs": [[key, value, pair_position, query_position], ...]}

plus `spec.json` (the generator's parameters) and `README.md`. `token_type_ids`, `labels` and
the distances follow from `pairs` (`RecallDataset`). The stream is a function of the seed only.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from longseq.data.tokenizers import CONFIG_NAME
from longseq.labels import IGNORE

SPLITS = ("train", "val", "test")
SPEC_JSON = "spec.json"


@dataclass(frozen=True)
class RecallSpec:
    """What the generator draws from. `distances`: inclusive (low, high) ranges of d = q - p."""

    length: int = 256
    pairs: int = 8
    keys: int = 32
    values: int = 8
    filler: int = 8
    distances: tuple[tuple[int, int], ...] = ((1, 16), (17, 32), (33, 255))

    def __post_init__(self) -> None:
        object.__setattr__(self, "distances", tuple(tuple(map(int, r)) for r in self.distances))
        for name in ("length", "pairs", "keys", "values", "filler"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"recall: {name} must be a positive integer, got {value!r}")
        if self.values < 2:
            raise ValueError(f"recall: values must be at least 2, got {self.values}")
        if self.pairs > self.keys:
            raise ValueError(
                f"recall: {self.pairs} pairs need as many distinct keys, but keys={self.keys}"
            )
        if 2 * self.pairs > self.length // 2:
            raise ValueError(
                f"recall: {self.pairs} pairs and their queries take {2 * self.pairs} of "
                f"{self.length} positions; keep them to at most half (length >= "
                f"{4 * self.pairs})"
            )
        if not self.distances:
            raise ValueError("recall: give at least one distance range")
        for low, high in self.distances:
            if not 1 <= low <= high <= self.length - 1:
                raise ValueError(
                    f"recall: distance range {low}-{high} must satisfy 1 <= low <= high <= "
                    f"length - 1 = {self.length - 1}"
                )

    @property
    def vocab_size(self) -> int:
        return 2 + self.filler + self.keys

    def key_id(self, key: int) -> int:
        return 2 + self.filler + key

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["distances"] = [list(r) for r in self.distances]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RecallSpec:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "distances" in known:
            known["distances"] = tuple(tuple(r) for r in known["distances"])
        return cls(**known)


def parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """'1:16,17:32,33:255' -> ((1, 16), (17, 32), (33, 255)); 'N' alone is N:N."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, sep, high = part.partition(":")
        try:
            out.append((int(low), int(high) if sep else int(low)))
        except ValueError:
            raise ValueError(f"distance range {part!r}: expected LOW:HIGH (integers)") from None
    return tuple(out)


def generate(spec: RecallSpec, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` examples from a stream seeded by `seed` (Python's Mersenne Twister)."""
    rng = random.Random(seed)
    return [_example(spec, rng) for _ in range(count)]


def _example(spec: RecallSpec, rng: random.Random) -> dict[str, Any]:
    n = spec.length
    ids = [2 + rng.randrange(spec.filler) for _ in range(n)]
    used: set[int] = set()
    pairs = []
    for key in rng.sample(range(spec.keys), spec.pairs):
        low, high = spec.distances[rng.randrange(len(spec.distances))]
        # at most half the positions are taken, so a free (p, q) is found quickly
        for _ in range(10_000):
            d = rng.randint(low, high)
            q = rng.randint(d, n - 1)
            if q not in used and q - d not in used:
                break
        else:  # pragma: no cover - needs a pathological spec
            raise RuntimeError(f"recall: no free positions for distance {low}-{high}")
        p = q - d
        used |= {p, q}
        value = rng.randrange(spec.values)
        ids[p] = ids[q] = spec.key_id(key)
        pairs.append([key, value, p, q])
    return {"input_ids": ids, "pairs": pairs}


def split_path(folder: str | Path, split: str) -> Path:
    return Path(folder) / f"recall_{split}.jsonl"


def write_splits(
    folder: str | Path,
    spec: RecallSpec,
    sizes: dict[str, int],
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Path]:
    """Write recall_{train,val,test}.jsonl, spec.json and README.md; each split its own seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    done = 0
    for i, split in enumerate(SPLITS):
        path = split_path(folder, split)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for ex in generate(spec, sizes[split], seed * 1000 + i):
                f.write(json.dumps(ex, separators=(",", ":")) + "\n")
                done += 1
                if progress and done % 500 == 0:
                    progress(done)
        tmp.replace(path)
        paths[split] = path
    meta = {"spec": spec.to_dict(), "sizes": sizes, "seed": seed}
    (folder / SPEC_JSON).write_text(json.dumps(meta, indent=1) + "\n")
    (folder / "README.md").write_text(_readme(spec, sizes, seed))
    return paths


def read_spec(folder: str | Path) -> RecallSpec:
    path = Path(folder) / SPEC_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (written by `longseq data recall`)")
    return RecallSpec.from_dict(json.loads(path.read_text())["spec"])


def read_split(path: str | Path) -> list[dict[str, Any]]:
    """The examples of one file, checked: a bad line names the file and line."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
                ids, pairs = ex["input_ids"], ex["pairs"]
                n = len(ids)
                for _key, _value, p, q in pairs:
                    if not 0 <= p < q < n or ids[p] != ids[q]:
                        raise ValueError(f"pair at {p}, query at {q} do not fit")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not a recall example ({e})") from None
            out.append(ex)
    return out


class RecallTokenizer:
    """The recall vocabulary (see the module docstring); ids only, no text."""

    pad_id, cls_id, sep_id, mask_id = 0, 1, None, None

    def __init__(self, spec: RecallSpec) -> None:
        self.spec = spec
        self.vocab_size = spec.vocab_size
        self.type_vocab_size = 1 + spec.values

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RecallTokenizer:
        """The tokenizer `save` wrote (its tokenizer_config.json, read)."""
        return cls(RecallSpec.from_dict(config.get("spec", {})))

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        config = {"type": "recall", "spec": self.spec.to_dict()}
        (out / CONFIG_NAME).write_text(json.dumps(config) + "\n")
        return out

    def __repr__(self) -> str:
        return f"RecallTokenizer(vocab_size={self.vocab_size}, values={self.spec.values})"


def features(ex: dict[str, Any]) -> dict[str, Any]:
    """input_ids, token_type_ids (1 + value at pairs), labels (value at queries), distance."""
    n = len(ex["input_ids"])
    types, labels, dist = [0] * n, [IGNORE] * n, [0] * n
    for _key, value, p, q in ex["pairs"]:
        types[p] = 1 + value
        labels[q] = value
        dist[q] = q - p
    return {
        "input_ids": ex["input_ids"],
        "token_type_ids": types,
        "labels": labels,
        "distance": dist,
    }


class RecallDataset:
    """A split file as model inputs: input_ids, token_type_ids, labels (and `distance`)."""

    def __init__(self, path: str | Path, max_length: int | None = None) -> None:
        self.path = Path(path)
        self.examples = read_split(self.path)
        self.lengths = [len(ex["input_ids"]) for ex in self.examples]
        if max_length is not None and self.lengths and max(self.lengths) > max_length:
            raise ValueError(
                f"{self.path}: examples of {max(self.lengths)} tokens exceed data.max_length="
                f"{max_length}; recall examples are never cut (a cut could drop a pair)"
            )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # torch on first use: `longseq data` writes and reads files without it
        import torch

        f = features(self.examples[i])
        return {k: torch.tensor(v, dtype=torch.long) for k, v in f.items() if k != "distance"}


def _readme(spec: RecallSpec, sizes: dict[str, int], seed: int) -> str:
    ranges = ", ".join(f"{a}-{b}" for a, b in spec.distances)
    return f"""# Associative recall by distance (longseq data recall)

Generated by longseq (seed {seed}): {sizes["train"]:,} / {sizes["val"]:,} / {sizes["test"]:,}
examples of {spec.length} tokens, {spec.pairs} key->value pairs each, {spec.keys} keys,
{spec.values} values, {spec.filler} filler tokens; query distances drawn from the ranges
{ranges} (a range uniformly, then a distance in it).

Files: recall_{{train,val,test}}.jsonl, one example per line:
{{"input_ids": [...], "pairs": [[key, value, pair_position, query_position], ...]}}.
The pair's token carries its value as token type 1 + value; the label of the query position
is the value. See `longseq/data/recall.py`.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = RecallSpec()
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--length", type=int, default=d.length, help=f"tokens (default {d.length})")
    p.add_argument("--pairs", type=int, default=d.pairs, help=f"pairs per sequence ({d.pairs})")
    p.add_argument("--keys", type=int, default=d.keys, help=f"key vocabulary ({d.keys})")
    p.add_argument("--values", type=int, default=d.values, help=f"classes ({d.values})")
    p.add_argument("--filler", type=int, default=d.filler, help=f"filler tokens ({d.filler})")
    p.add_argument(
        "--distances",
        default=",".join(f"{a}:{b}" for a, b in d.distances),
        help="query-to-pair distance ranges LOW:HIGH, comma-separated; a range is chosen "
        "uniformly, then a distance in it (default %(default)s)",
    )
    p.add_argument("--train", type=int, default=16_000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--test", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        spec = RecallSpec(
            length=args.length,
            pairs=args.pairs,
            keys=args.keys,
            values=args.values,
            filler=args.filler,
            distances=parse_ranges(args.distances),
        )
        sizes = {"train": args.train, "val": args.val, "test": args.test}
        if any(v < 1 for v in sizes.values()):
            raise ValueError(f"split sizes must be positive, got {sizes}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_splits(args.out, spec, sizes, args.seed)
    for path in paths.values():
        print(f"wrote {path}")
    print(f"wrote {Path(args.out) / SPEC_JSON}")
    return 0


__all__ = [
    "IGNORE",
    "SPLITS",
    "RecallDataset",
    "RecallSpec",
    "RecallTokenizer",
    "features",
    "generate",
    "parse_ranges",
    "read_spec",
    "read_split",
    "write_splits",
]
