"""ListOps generator, files, tokenizer and dataset.

Oracles independent of the module: a plain recursive re-statement of LRA's process (nested
pairs, printed pair by pair, random numbers drawn with `choice`/`randint`); an evaluator that
rewrites innermost `[OP d d ... ]` by regular expression, with `statistics.median`; and a
small parser of our own for the tree's shape.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics

import pytest
import torch

from longseq.data import listops
from longseq.data.collate import BucketBatchSampler, Collator
from longseq.data.listops import ListOpsDataset, ListOpsTokenizer
from longseq.data.tokenizers import ByteTokenizer, Tokenizer

OPS = ("[MIN", "[MAX", "[MED", "[SM")
SMALL = {"min_length": 10, "max_length": 120}  # a short window, fast to generate


def lra_process(n, seed, min_length, max_length, max_depth=10, max_args=10):
    """LRA's generator, restated: trees as nested pairs, kept if in the window and new."""
    rng = random.Random(seed)

    def tree(depth):
        r = rng.random() if depth < max_depth else 1.0
        if r > 0.25:
            return rng.choice(range(10)), 1
        k = rng.randint(2, max_args)
        args = [tree(depth + 1) for _ in range(k)]
        node = rng.choice(OPS)
        for arg, _ in args:
            node = (node, arg)
        return (node, "]"), 2 + sum(length for _, length in args)

    def text(t):
        return f"( {text(t[0])} {text(t[1])} )" if isinstance(t, tuple) else str(t)

    seen, out = set(), []
    while len(out) < n:
        t, length = tree(1)
        if min_length < length < max_length and text(t) not in seen:
            seen.add(text(t))
            out.append(text(t))
    return out


_INNERMOST = re.compile(r"\[(MIN|MAX|MED|SM)((?: \d)+) \]")
_FUNCS = {
    "MIN": min,
    "MAX": max,
    "MED": lambda xs: int(statistics.median(xs)),
    "SM": lambda xs: sum(xs) % 10,
}


def rewrite_eval(source: str) -> int:
    """Value by rewriting innermost operators until one digit is left."""
    s = " ".join(t for t in source.split() if t not in "()")
    while True:
        nxt = _INNERMOST.sub(
            lambda m: str(_FUNCS[m.group(1)]([int(x) for x in m.group(2).split()])), s
        )
        if nxt == s:
            break
        s = nxt
    assert re.fullmatch(r"\d", s), f"did not reduce to a digit: {s[:80]!r}"
    return int(s)


def shape(source: str):
    """Nested lists [op, arg, ...] from the brackets; digits as ints."""
    stack = [[]]
    for tok in source.split():
        if tok in OPS:
            stack.append([tok])
        elif tok == "]":
            node = stack.pop()
            stack[-1].append(node)
        elif tok.isdigit():
            stack[-1].append(int(tok))
    assert len(stack) == 1 and len(stack[0]) == 1
    return stack[0][0]


def depth_and_args(node, depth=1):
    """(max depth, set of argument counts) of a shape."""
    if isinstance(node, int):
        return depth, set()
    deepest, counts = depth, {len(node) - 1}
    for arg in node[1:]:
        d, c = depth_and_args(arg, depth + 1)
        deepest, counts = max(deepest, d), counts | c
    return deepest, counts


def nonparen(source: str) -> int:
    return sum(t not in ("(", ")") for t in source.split())


@pytest.fixture(scope="module")
def default_examples():
    return listops.generate(40, seed=3)


# ---- the process and its labels ------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "window", "depth", "args"),
    [(0, (10, 120), 10, 10), (7, (3, 40), 4, 3), (1, (500, 2000), 10, 10)],
)
def test_same_trees_as_lra_process(seed, window, depth, args):
    n = 15 if window[0] == 500 else 100
    ours = listops.generate(n, seed, *window, max_depth=depth, max_args=args)
    assert [s for s, _ in ours] == lra_process(n, seed, *window, depth, args)


def test_labels_equal_independent_evaluators(default_examples):
    examples = default_examples + listops.generate(300, seed=5, **SMALL)
    for source, label in examples:
        assert listops.evaluate(source) == label
        assert rewrite_eval(source) == label
    assert len({label for _, label in examples}) == 10  # every class occurs


def test_grammar(default_examples):
    allowed = {"(", ")", "]", *OPS, *map(str, range(10))}
    for source, _ in default_examples + listops.generate(200, seed=2, max_depth=5, **SMALL):
        toks = source.split()
        assert set(toks) <= allowed
        assert " ".join(toks) == source  # single spaces, no stray whitespace
        level = 0
        for t in toks:
            level += (t == "(") - (t == ")")
            assert level >= 0
        assert level == 0
        assert sum(t in OPS for t in toks) == toks.count("]")
        deepest, counts = depth_and_args(shape(source))
        assert deepest <= 10
        assert counts <= set(range(2, 11))


def test_written_layout_is_lra():
    # [MAX 2 9 ]: LRA prints the pairs ((([MAX, 2), 9), ]) as "( x y )" each.
    src = "( ( ( [MAX 2 ) 9 ) ] )"
    assert listops.evaluate(src) == 9 and listops.lra_length(src) == 4
    for source, _ in listops.generate(50, seed=4, **SMALL):
        assert source.startswith("( ") and source.endswith(" ] )")


def test_length_bounds(default_examples):
    for source, _ in default_examples:
        assert 500 < nonparen(source) < 2000
        assert listops.lra_length(source) == nonparen(source)
    for source, _ in listops.generate(100, seed=1, min_length=300, max_length=700):
        assert 300 < nonparen(source) < 700


# ---- the operators and a crafted example ---------------------------------------------


def test_operators():
    assert listops.apply("[MED", [1, 2]) == 1  # 1.5 -> integer part
    assert listops.apply("[MED", [6, 3, 5, 4]) == 4
    assert listops.apply("[MED", [9, 1, 2]) == 2
    assert listops.apply("[MED", [9, 9]) == 9
    assert listops.apply("[SM", [9, 9, 5]) == 3
    assert listops.apply("[SM", [5, 5]) == 0
    assert listops.apply("[MIN", [4, 7, 3]) == 3
    assert listops.apply("[MAX", [4, 7, 3]) == 7
    with pytest.raises(ValueError, match="unknown operator"):
        listops.apply("[FIRST", [1, 2])


def test_crafted_example():
    # [SM [MED 1 2 ] [MAX 3 7 ] 9 ] = (1 + 7 + 9) mod 10 = 7, in LRA's layout.
    src = "( ( ( ( [SM ( ( ( [MED 1 ) 2 ) ] ) ) ( ( ( [MAX 3 ) 7 ) ] ) ) 9 ) ] )"
    assert listops.evaluate(src) == 7
    assert rewrite_eval(src) == 7
    assert listops.evaluate("[SM [MED 1 2 ] [MAX 3 7 ] 9 ]") == 7  # parentheses optional
    assert listops.lra_length(src) == 11


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[MAX 1 2", "not closed"),
        ("[MAX 1 2 ] ]", "without an open operator"),
        ("( [MAX 1 2 ]", "not closed by"),
        ("[MAX 1 2 ] )", "without a matching"),
        ("[MAX 1 x ]", "unknown token"),
        ("[MAX ]", "no arguments"),
        ("1 2", "after a complete expression"),
        ("", "empty"),
    ],
)
def test_evaluate_rejects_malformed(text, message):
    with pytest.raises(ValueError, match=message):
        listops.evaluate(text)


# ---- files: determinism, duplicates, format ------------------------------------------


def _split_bytes(paths):
    return {split: path.read_bytes() for split, path in paths.items()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a = listops.write_splits(tmp_path / "a", 60, 10, 10, seed=11, **SMALL)
    b = listops.write_splits(tmp_path / "b", 60, 10, 10, seed=11, **SMALL)
    c = listops.write_splits(tmp_path / "c", 60, 10, 10, seed=12, **SMALL)
    assert {s: p.name for s, p in a.items()} == {
        "train": "listops_train.tsv",
        "val": "listops_val.tsv",
        "test": "listops_test.tsv",
    }
    assert _split_bytes(a) == _split_bytes(b)
    for split in listops.SPLITS:
        assert a[split].read_bytes() != c[split].read_bytes()
    # Only the train size changed: val and test stay the same.
    d = listops.write_splits(tmp_path / "d", 30, 10, 10, seed=11, **SMALL)
    assert _split_bytes(d)["test"] == _split_bytes(a)["test"]
    assert _split_bytes(d)["val"] == _split_bytes(a)["val"]


def test_no_duplicates_within_or_across_splits(tmp_path):
    # A window of short trees, where the raw stream repeats itself often.
    # (seed 0: 14 of its first 314 trees in this window repeat an earlier one)
    paths = listops.write_splits(tmp_path, 200, 50, 50, seed=0, min_length=2, max_length=9)
    sources = [s for p in paths.values() for s, _ in listops.read_split(p)]
    assert len(sources) == 300 == len(set(sources))


def test_tsv_round_trip(tmp_path):
    paths = listops.write_splits(tmp_path, 20, 5, 7, seed=9, **SMALL)
    expected = listops.generate(32, seed=9, **SMALL)
    raw = paths["val"].read_bytes()
    assert raw.startswith(b"Source\tTarget\r\n")
    lines = raw.decode().split("\r\n")
    assert lines[-1] == "" and len(lines) == 1 + 5 + 1
    for line in lines[1:-1]:
        source, target = line.split("\t")
        assert listops.evaluate(source) == int(target)
    assert listops.read_split(paths["test"]) == expected[:7]
    assert listops.read_split(paths["val"]) == expected[7:12]
    assert listops.read_split(paths["train"]) == expected[12:]


def test_read_split_other_writers_and_errors(tmp_path):
    path = tmp_path / "basic_test.tsv"  # LRA's own name; "\n" line ends
    path.write_text("Source\tTarget\n( ( ( [MAX 2 ) 9 ) ] )\t9\n[MIN 4 7 ]\t4\n")
    assert listops.read_split(path) == [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("[MIN 4 7 ]", 4)]
    for body, message in [
        ("src\tlabel\n", "header"),
        ("Source\tTarget\n[MIN 4 7 ]\tfour\n", "not an integer"),
        ("Source\tTarget\n[MIN 4 7 ]\t12\n", "not a digit"),
        ("Source\tTarget\n[MIN 4 7 ]\n", "2 tab-separated fields"),
    ]:
        path.write_text(body)
        with pytest.raises(ValueError, match=message):
            listops.read_split(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1}, "n must be"),
        ({"n": 1, "max_args": 1}, "max_args"),
        ({"n": 1, "max_depth": 0}, "max_depth"),
        ({"n": 1, "min_length": 500, "max_length": 501}, "min_length"),
        ({"n": 1, "max_depth": 3, "max_args": 2}, "unreachable"),
    ],
)
def test_generate_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        listops.generate(seed=0, **kwargs)


def test_gives_up_when_window_runs_dry(monkeypatch):
    monkeypatch.setattr(listops, "PATIENCE", 3000)
    # Length 1 < 2: only the ten bare digits exist.
    assert len(listops.generate(10, 0, min_length=0, max_length=2)) == 10
    with pytest.raises(ValueError, match="found only 10 of 11"):
        listops.generate(11, 0, min_length=0, max_length=2)


# ---- tokenizer and dataset -----------------------------------------------------------


def test_tokenizer_keeps_closing_bracket_drops_parens():
    tok = ListOpsTokenizer()
    src = "( ( ( ( [SM ( ( ( [MED 1 ) 2 ) ] ) ) ( ( ( [MAX 3 ) 7 ) ] ) ) 9 ) ] )"
    ids = tok.encode(src)
    assert tok.decode(ids) == "[SM [MED 1 2 ] [MAX 3 7 ] 9 ]"
    assert len(ids) == listops.lra_length(src) == 11
    assert tok.vocab_size == 4 + 10 + 4 + 1
    assert len(set(tok.tokens)) == tok.vocab_size
    assert {tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id} == {0, 1, 2, 3}
    assert isinstance(tok, Tokenizer)
    assert tok.decode([tok.cls_id, *ids, tok.pad_id]) == tok.decode(ids)
    for source, label in listops.generate(50, seed=8, **SMALL):
        ids = tok.encode(source)
        closes = tok.tokens.index("]")
        assert ids.count(closes) == sum(ids.count(tok.tokens.index(op)) for op in OPS)
        assert listops.evaluate(tok.decode(ids)) == label  # the tree survives
    with pytest.raises(ValueError, match="not in the ListOps vocabulary"):
        tok.encode("[MAX 2 9]")


def test_tokenizer_keep_parens_and_save_load(tmp_path):
    tok = ListOpsTokenizer(keep_parens=True)
    src = "( ( ( [MAX 2 ) 9 ) ] )"
    assert tok.decode(tok.encode(src)) == src
    assert tok.vocab_size == 21
    assert tok.save(tmp_path) == tmp_path
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config == {"type": "listops", "keep_parens": True}
    back = ListOpsTokenizer.load(tmp_path)
    assert back.tokens == tok.tokens
    with pytest.raises(ValueError, match="not a ListOps"):
        ListOpsTokenizer.from_config({"type": "bytes"})


def test_dataset_with_collator_and_sampler(tmp_path):
    paths = listops.write_splits(tmp_path, 6, 1, 1, seed=0, **SMALL)
    tok = ListOpsTokenizer()
    ds = ListOpsDataset(paths["train"], tok, max_length=200)
    examples = listops.read_split(paths["train"])
    assert len(ds) == 6 and ds.num_labels == 10 and ds.label_names[3] == "3"
    for i, (source, label) in enumerate(examples):
        item = ds[i]
        assert item["input_ids"].dtype == torch.long
        assert item["input_ids"].tolist() == [tok.cls_id, *tok.encode(source)]
        assert ds.lengths[i] == len(item["input_ids"])
        assert item["labels"].item() == label
    batch = Collator(pad_id=tok.pad_id)([ds[i] for i in range(4)])
    assert batch["attention_mask"].sum(1).tolist() == ds.lengths[:4]
    assert batch["labels"].tolist() == [label for _, label in examples[:4]]
    loader = torch.utils.data.DataLoader(
        ds,
        batch_sampler=BucketBatchSampler(ds.lengths, batch_size=3, shuffle=False),
        collate_fn=Collator(pad_id=tok.pad_id),
    )
    assert sum(len(b["labels"]) for b in loader) == 6
    with pytest.raises(ValueError, match="max_length=5"):
        ListOpsDataset(examples, tok, max_length=5)


def test_dataset_other_tokenizers():
    examples = listops.generate(5, seed=0, **SMALL)
    parens = ListOpsDataset(examples, ListOpsTokenizer(keep_parens=True))
    byte = ListOpsDataset(examples, ByteTokenizer())
    for i, (source, _) in enumerate(examples):
        assert parens.lengths[i] == 1 + len(source.split()) == len(parens[i]["input_ids"])
        assert byte.lengths[i] == 1 + len(source) == len(byte[i]["input_ids"])


def test_the_size_estimate_is_close_to_what_is_written(tmp_path):
    """`longseq data listops` says the size up front (LRA's default wrote 634 MB unannounced)."""
    size, seconds = listops.estimate(400, **SMALL)
    listops.write_splits(tmp_path, 300, 50, 50, seed=3, **SMALL)
    written = sum(p.stat().st_size for p in tmp_path.glob("listops_*.tsv"))
    assert size == pytest.approx(written, rel=0.15) and seconds > 0


def test_cli_run(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    listops.add_arguments(parser)
    sizes = ["--train", "8", "--val", "2", "--test", "2", "--seed", "1"]
    window = ["--min-length", "10", "--max-length", "120"]
    args = parser.parse_args([*sizes, *window, "--out", str(tmp_path)])
    assert listops.run(args) == 0
    printed = capsys.readouterr()
    assert "listops_train.tsv" in printed.out
    assert len(listops.read_split(tmp_path / "listops_train.tsv")) == 8
    assert printed.err.index("12 examples, about ") < printed.err.index("12 examples in")
    bad = parser.parse_args(["--out", str(tmp_path), "--min-length", "10", "--max-length", "11"])
    assert listops.run(bad) == 2
    assert "min_length" in capsys.readouterr().err


def test_load_tokenizer_reads_a_saved_listops_tokenizer(tmp_path):
    from longseq.data.listops import ListOpsTokenizer
    from longseq.data.tokenizers import load_tokenizer

    tok = ListOpsTokenizer()
    tok.save(tmp_path)
    back = load_tokenizer(tmp_path)
    assert isinstance(back, ListOpsTokenizer)
    text = "( ( [MAX 2 ) 9 ) ]"
    assert back.encode(text) == tok.encode(text)
