"""ListOps, as the Long Range Arena (LRA) generates it: nested list operations, 10 classes.

An expression is a tree. A leaf is a digit 0-9; an inner node applies an operator to its
2..max_args arguments; the label is the value of the root, a digit (10-way classification):

    MIN, MAX   smallest / largest argument
    MED        median, integer part: int(numpy.median(args)); for an even count the mean of
               the two middle values rounded down, so MED [1 2] = 1
    SM         sum mod 10

The process (LRA's `lra_benchmarks/data/listops.py`, reimplemented here): a node at depth d
(the root has d = 1) is a leaf with probability 0.75 while d < max_depth and always at
d = max_depth; otherwise it is an operator. We draw the same random numbers in the same order
as LRA's `generate_tree` (`random()` for the node type; `choice(range(10))` for a digit;
`randint(2, max_args)` for the argument count, then the arguments, then `choice` of the
operator), so `generate(n, s)` meets the same trees as LRA's loop after `random.seed(s)`.

Length is LRA's: the number of operator, digit and `]` tokens, parentheses not counted
(leaf 1, operator 2 + its arguments' lengths). A tree is kept when
min_length < length < max_length, by rejection: at the defaults (500, 2000) 8.2% of draws
are kept (90.6% are shorter, 1.2% longer). Duplicates are dropped, across all
splits: the splits are consecutive slices of one stream of distinct trees (test first, then
val, then train, so the test set does not change when only --train does). LRA dedups
through a Python set and splits it in hash order, which no seed fixes; we keep drawing order.

Written form: LRA builds an operator node with arguments a1..ak as nested pairs
((((op, a1), a2) ..., ak), "]") and prints every pair as "( x y )", so
[MAX 2 9] is written "( ( ( [MAX 2 ) 9 ) ] )". The parentheses restate what the operator
and `]` already say (every pair closes exactly where the next argument or `]` follows), so
`ListOpsTokenizer` drops them by default, as LRA's fixed input pipeline does, and keeps `]`:
the bracket that LRA's original pipeline lost, which made the task unlearnable.
Files: `listops_{train,val,test}.tsv`, tab-separated, header `Source<TAB>Target`, lines
ended as Python's csv writer (which LRA uses) ends them, "\\r\\n".
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

OPERATORS: tuple[str, ...] = ("[MIN", "[MAX", "[MED", "[SM")  # LRA's order (drawn by index)
CLOSE = "]"
PARENS: tuple[str, str] = ("(", ")")
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
NUM_CLASSES = 10
OPERATOR_PROB = 0.25  # LRA's VALUE_P: a node above the depth limit is an operator w.p. 0.25
SPLITS: tuple[str, ...] = ("train", "val", "test")
HEADER: tuple[str, str] = ("Source", "Target")

Example = tuple[str, int]

# A window holding too few distinct trees would make generation loop forever: give up after
# this many draws in a row without a new example (the defaults need about 12 per example).
PATIENCE = 2_000_000


def apply(op: str, args: Sequence[int]) -> int:
    """Value of operator `op` (e.g. "[MED") on the digits `args`."""
    if not args:
        raise ValueError(f"operator {op} has no arguments")
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[SM":
        return sum(args) % 10
    if op == "[MED":
        s = sorted(args)
        m = len(s) // 2
        # int(numpy.median): the middle value, or the mean of the two middle values rounded
        # down (all values are >= 0, so rounding toward zero is rounding down).
        return s[m] if len(s) % 2 else (s[m - 1] + s[m]) // 2
    raise ValueError(f"unknown operator {op!r}; valid: {' '.join(OPERATORS)}")


def lra_length(source: str) -> int:
    """LRA's length of an expression: its tokens other than parentheses."""
    return sum(tok not in PARENS for tok in source.split())


def evaluate(source: str) -> int:
    """Parse an expression (LRA layout, parentheses optional) and return its value.

    Independent of the generator: a stack of open operators, checked as it goes. Raises
    ValueError naming the first problem (unknown token, unbalanced brackets or parentheses,
    operator without arguments, more than one expression).
    """
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    open_parens = 0
    for i, tok in enumerate(source.split()):
        if tok == "(":
            open_parens += 1
            continue
        if tok == ")":
            open_parens -= 1
            if open_parens < 0:
                raise ValueError(f"token {i}: ')' without a matching '('")
            continue
        if tok in OPERATORS:
            stack.append((tok, []))
            continue
        if tok == CLOSE:
            if not stack:
                raise ValueError(f"token {i}: ']' without an open operator")
            op, args = stack.pop()
            value = apply(op, args)
        elif tok in DIGITS:
            value = int(tok)
        else:
            raise ValueError(f"token {i}: unknown token {tok!r}")
        if stack:
            stack[-1][1].append(value)
        elif result is None:
            result = value
        else:
            raise ValueError(f"token {i}: text continues after a complete expression")
    if stack:
        raise ValueError(f"{len(stack)} operator(s) not closed by ']'")
    if open_parens:
        raise ValueError(f"{open_parens} '(' not closed by ')'")
    if result is None:
        raise ValueError("empty expression")
    return result


# ---------------------------------------------------------------------------------------
# Generation


def _sampler(
    rng: random.Random, max_depth: int, max_args: int
) -> Callable[[], tuple[list[str], int, int]]:
    """A function drawing one tree: (its LRA text pieces, to join with " ", value, length).

    Random numbers are drawn exactly as LRA's recursion draws them; leaves are handled in
    their parent's loop rather than by a call each (they are 3/4 of all nodes), and a digit
    is drawn as `choice(range(10))` draws it inside CPython (`_randbelow(10)`: 4 random
    bits until one is below 10), which is a third faster than calling `choice`. The tests
    check both shortcuts against a plain recursion that calls `choice`.
    """
    coin, bits, choice = rng.random, rng.getrandbits, rng.choice
    arg_counts = range(2, max_args + 1)  # choice(arg_counts) draws as randint(2, max_args)

    def operator(depth: int, out: list[str]) -> tuple[int, int]:
        k = choice(arg_counts)
        slot = len(out)
        out.append("")  # "( " * (k + 1) + operator, known once the arguments are drawn
        length, values = 2, []
        leaves_only = depth + 1 >= max_depth
        for _ in range(k):
            # LRA: a leaf when random() > 0.25, random() drawn only above the depth limit.
            if leaves_only or coin() > OPERATOR_PROB:
                r = bits(4)
                while r >= 10:
                    r = bits(4)
                out.append(DIGITS[r])
                values.append(r)
                length += 1
            else:
                value, sub = operator(depth + 1, out)
                values.append(value)
                length += sub
            out.append(")")
        op = choice(OPERATORS)
        out[slot] = "( " * (k + 1) + op
        out.append("] )")
        return apply(op, values), length

    def draw() -> tuple[list[str], int, int]:
        if max_depth <= 1 or coin() > OPERATOR_PROB:
            digit = choice(DIGITS)
            return [digit], int(digit), 1
        out: list[str] = []
        value, length = operator(1, out)
        return out, value, length

    return draw


def max_reachable_length(max_depth: int, max_args: int) -> int:
    """Longest tree the process can draw: every node above the depth limit an operator."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def _check(min_length: int, max_length: int, max_depth: int, max_args: int) -> None:
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2 (an operator has 2..max_args), got {max_args}")
    if min_length < 0 or max_length - min_length < 2:
        raise ValueError(
            f"need 0 <= min_length and min_length + 2 <= max_length (kept lengths satisfy "
            f"min_length < length < max_length), got {min_length} and {max_length}"
        )
    top = max_reachable_length(max_depth, max_args)
    if min_length >= top:
        raise ValueError(
            f"min_length={min_length} is unreachable: with max_depth={max_depth} and "
            f"max_args={max_args} the longest tree has {top} tokens; lower min_length"
        )


def _generate(
    n: int,
    seed: int,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Example], int]:
    """`n` distinct examples and the number of trees drawn to find them."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check(min_length, max_length, max_depth, max_args)
    draw = _sampler(random.Random(seed), max_depth, max_args)
    seen: set[str] = set()
    examples: list[Example] = []
    draws = stale = 0
    while len(examples) < n:
        out, value, length = draw()
        draws += 1
        stale += 1
        if min_length < length < max_length:
            source = " ".join(out)
            if source not in seen:
                seen.add(source)
                examples.append((source, value))
                stale = 0
                if progress is not None and len(examples) % 1000 == 0:
                    progress(len(examples), draws)
        if stale >= PATIENCE:
            raise ValueError(
                f"found only {len(examples)} of {n} distinct trees with {min_length} < length "
                f"< {max_length} after {draws} draws ({PATIENCE} in a row found nothing new); "
                f"widen the length window or ask for fewer examples"
            )
    if progress is not None:
        progress(len(examples), draws)
    return examples, draws


def generate(
    n: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> list[Example]:
    """`n` distinct (source, label) pairs, in LRA's written form, deterministic in `seed`.

    progress(kept, drawn), if given, is called every 1000 kept examples and at the end.
    """
    return _generate(n, seed, min_length, max_length, max_depth, max_args, progress)[0]


# ---------------------------------------------------------------------------------------
# Files


def split_path(out_dir: str | Path, split: str) -> Path:
    return Path(out_dir) / f"listops_{split}.tsv"


def write_split(path: str | Path, examples: Sequence[Example]) -> Path:
    """Write one LRA tsv file."""
    path = Path(path)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\r\n")
        writer.writerow(HEADER)
        writer.writerows(examples)
    return path


def write_splits(
    out_dir: str | Path,
    train: int,
    val: int,
    test: int,
    seed: int,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Path]:
    """Generate distinct examples and write listops_{train,val,test}.tsv; return the paths."""
    counts = {"train": train, "val": val, "test": test}
    for split, count in counts.items():
        if count < 0:
            raise ValueError(f"the {split} size must be >= 0, got {count}")
    examples = generate(
        train + val + test, seed, min_length, max_length, max_depth, max_args, progress
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Test first, then val, then train: changing only the train size keeps val and test.
    bounds = {"test": (0, test), "val": (test, test + val), "train": (test + val, len(examples))}
    return {
        split: write_split(split_path(out, split), examples[slice(*bounds[split])])
        for split in SPLITS
    }


def read_split(path: str | Path) -> list[Example]:
    """Read an LRA ListOps tsv file (ours or LRA's): header Source<TAB>Target, then rows."""
    path = Path(path)
    # Long expressions (e.g. --max-length 20000) pass the csv module's 128 kB field limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t")
        header = next(rows, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise ValueError(f"{path}: expected the header 'Source<TAB>Target', got {header!r}")
        examples: list[Example] = []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{line}: expected 2 tab-separated fields, got {len(row)}")
            try:
                label = int(row[1])
            except ValueError:
                raise ValueError(f"{path}:{line}: Target {row[1]!r} is not an integer") from None
            if not 0 <= label < NUM_CLASSES:
                raise ValueError(f"{path}:{line}: Target {label} is not a digit 0-9")
            examples.append((row[0], label))
    return examples


# ---------------------------------------------------------------------------------------
# Tokenizer and dataset


class ListOpsTokenizer:
    """Fixed vocabulary: 4 specials, the digits, the 4 operators, `]` (and `(`, `)` if kept).

    Ids: pad 0, cls 1, sep 2, mask 3, digits 4-13, [MIN [MAX [MED [SM 14-17, `]` 18, and with
    keep_parens `(` 19, `)` 20. Parentheses are dropped by default: they repeat the tree that
    the operators and `]` already fix, and would triple the sequence length. `]`
    is a token: without it the tree is lost. encode() adds no special tokens (the dataset adds
    cls); decode() skips them. Follows `longseq.data.tokenizers.Tokenizer`.
    """

    SPECIALS: tuple[str, ...] = ("<pad>", "<cls>", "<sep>", "<mask>")
    pad_id, cls_id, sep_id, mask_id = 0, 1, 2, 3

    def __init__(self, keep_parens: bool = False) -> None:
        self.keep_parens = keep_parens
        self.tokens: tuple[str, ...] = (
            self.SPECIALS + DIGITS + OPERATORS + (CLOSE,) + (PARENS if keep_parens else ())
        )
        self.vocab_size = len(self.tokens)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._skip = frozenset(() if keep_parens else PARENS)

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        try:
            return [ids[t] for t in text.split() if t not in self._skip]
        except KeyError as e:
            raise ValueError(
                f"token {e.args[0]!r} is not in the ListOps vocabulary "
                f"({' '.join(self.tokens[len(self.SPECIALS) :])}); tokens are space-separated"
            ) from None

    def num_tokens(self, text: str) -> int:
        """len(encode(text)) for well-formed text, without building the ids."""
        n = len(text.split())
        return n if self.keep_parens else n - text.count("(") - text.count(")")

    def decode(self, ids: Iterable[int]) -> str:
        first = len(self.SPECIALS)
        return " ".join(self.tokens[i] for i in map(int, ids) if first <= i < self.vocab_size)

    def config(self) -> dict[str, Any]:
        return {"type": "listops", "keep_parens": self.keep_parens}

    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / "tokenizer_config.json").write_text(json.dumps(self.config()) + "\n")
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ListOpsTokenizer:
        if config.get("type") != "listops":
            raise ValueError(f"not a ListOps tokenizer config: {config!r}")
        return cls(keep_parens=bool(config.get("keep_parens", False)))

    @classmethod
    def load(cls, directory: str | Path) -> ListOpsTokenizer:
        return cls.from_config(json.loads((Path(directory) / "tokenizer_config.json").read_text()))

    def __repr__(self) -> str:
        return f"ListOpsTokenizer(keep_parens={self.keep_parens}, vocab_size={self.vocab_size})"


class ListOpsDataset:
    """Items {"input_ids": LongTensor [cls, tokens...], "labels": LongTensor ()}.

    `data` is a tsv path or a list of (source, label); `tokenizer` defaults to
    ListOpsTokenizer() (any longseq Tokenizer works, e.g. ByteTokenizer for a character-level
    variant). Nothing is truncated, since a cut expression has another value: an example
    longer than `max_length` (counting cls) is an error, raised here. `lengths` (for
    `BucketBatchSampler`), `label_names` and `num_labels` as in the other datasets; batch
    with `longseq.data.collate.Collator(pad_id=tokenizer.pad_id)`. Ids are encoded on access.
    A map-style dataset (__len__, __getitem__: all DataLoader needs) that leaves torch
    unimported until an item is read, so the command line stays quick to start.
    """

    num_labels = NUM_CLASSES

    def __init__(
        self,
        data: str | Path | Sequence[Example],
        tokenizer: Any | None = None,
        max_length: int | None = None,
    ) -> None:
        self.examples = read_split(data) if isinstance(data, (str, Path)) else list(data)
        self.tokenizer = tokenizer if tokenizer is not None else ListOpsTokenizer()
        self.max_length = max_length
        self.label_names = list(DIGITS)
        count = getattr(self.tokenizer, "num_tokens", None) or (
            lambda text: len(self.tokenizer.encode(text))
        )
        self.lengths = [1 + count(source) for source, _ in self.examples]
        if max_length is not None:
            over = [i for i, n in enumerate(self.lengths) if n > max_length]
            if over:
                raise ValueError(
                    f"{len(over)} example(s) exceed max_length={max_length} tokens with cls "
                    f"(example {over[0]} has {self.lengths[over[0]]}); raise max_length or "
                    f"generate with a smaller --max-length"
                )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # torch on first use: `longseq data` writes and reads files without it
        import torch

        source, label = self.examples[i]
        return {
            "input_ids": torch.tensor(
                [self.tokenizer.cls_id, *self.tokenizer.encode(source)], dtype=torch.long
            ),
            "labels": torch.tensor(label, dtype=torch.long),
        }


# ---------------------------------------------------------------------------------------
# Command line: `longseq data listops ...`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--train", type=int, default=96_000, help="train size (LRA: 96000)")
    parser.add_argument("--val", type=int, default=2_000, help="validation size (LRA: 2000)")
    parser.add_argument("--test", type=int, default=2_000, help="test size (LRA: 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-length", type=int, default=500, help="keep length > this (tokens, no parens)"
    )
    parser.add_argument("--max-length", type=int, default=2000, help="keep length < this")
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--max-args", type=int, default=10)


def estimate(n: int, **settings: int) -> tuple[float, float]:
    """(bytes, seconds) that writing `n` examples will take, scaled from a sample of up to
    200 drawn with another seed (one example's size varies tenfold, a sample's mean little)."""
    sample = min(n, 200)
    start = time.perf_counter()
    examples = generate(sample, seed=-1, **settings)
    seconds = time.perf_counter() - start
    row = sum(len(src.encode()) + len(str(label)) + 3 for src, label in examples)  # tab, CRLF
    return row * n / max(sample, 1), seconds * n / max(sample, 1)


def run(args: argparse.Namespace) -> int:
    total = args.train + args.val + args.test
    settings = {"min_length": args.min_length, "max_length": args.max_length,
                "max_depth": args.max_depth, "max_args": args.max_args}  # fmt: skip
    try:
        size, seconds = estimate(total, **settings)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    took = f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
    mb = f"{size / 1e6:,.0f} MB" if size >= 1e7 else f"{size / 1e6:.2f} MB"
    print(
        f"listops: {total:,} examples, about {mb} in {args.out} and {took} "
        "(estimated from a sample; --train sets the bulk)",
        file=sys.stderr,
    )
    start = time.perf_counter()

    def progress(kept: int, drawn: int) -> None:
        print(f"\rlistops: {kept}/{total} kept of {drawn} drawn", end="", file=sys.stderr)

    try:
        paths = write_splits(
            args.out,
            args.train,
            args.val,
            args.test,
            args.seed,
            **settings,
            progress=progress,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\nlistops: {total} examples in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    for path in paths.values():
        print(f"wrote {path}")
    return 0
