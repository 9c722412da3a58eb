"""Datasets: JSONL/CSV classification parsing, labels and errors; LM blocks tile the corpus."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as RawTokenizer
from tokenizers import models, pre_tokenizers, trainers

from longseq.data.collate import Collator
from longseq.data.datasets import (
    LMDataset,
    TextClassificationDataset,
    _encode_long_text,
    load_label_names,
    resolve_labels,
)
from longseq.data.tokenizers import HFTokenizer


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path, rows: list[dict], fields: tuple[str, ...] = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


# ----------------------------------------------------------------------------- classification
def test_jsonl_string_labels_and_truncation(tmp_path: Path) -> None:
    rows = [
        {"text": "to be or not to be", "label": "tragedy"},
        {"text": "all's well", "label": "comedy"},
        {"text": "é", "label": "history", "extra": 1},  # extra fields are ignored
        {"text": "", "label": "comedy"},
    ]
    ds = TextClassificationDataset(write_jsonl(tmp_path / "d.jsonl", rows), max_length=8)
    assert ds.label_names == ["comedy", "history", "tragedy"]
    assert ds.num_labels == 3 and len(ds) == 4
    assert [int(ds[i]["labels"]) for i in range(4)] == [2, 0, 1, 0]
    first = ds[0]["input_ids"]
    assert first.dtype == torch.long
    # [cls] + the first 6 bytes (+4) + [sep] = max_length
    assert first.tolist() == [1] + [b + 4 for b in b"to be "] + [2]
    assert ds[2]["input_ids"].tolist() == [1, 0xC3 + 4, 0xA9 + 4, 2]  # two UTF-8 bytes
    assert ds[3]["input_ids"].tolist() == [1, 2]
    assert ds.lengths == [8, 8, 4, 2]


def test_csv_numeric_labels_sort_numerically(tmp_path: Path) -> None:
    rows = [{"text": 'a,b "quoted"\nline', "label": "10"}, {"text": "x", "label": "2"}]
    ds = TextClassificationDataset(write_csv(tmp_path / "d.csv", rows), max_length=64)
    assert ds.label_names == ["2", "10"]
    assert [int(ds[i]["labels"]) for i in range(2)] == [1, 0]
    assert ds[0]["input_ids"][1:-1].tolist() == [b + 4 for b in rows[0]["text"].encode()]


def test_integer_labels_and_given_names(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 2}, {"text": "b", "label": 0}])
    ds = TextClassificationDataset(path)
    assert ds.label_names == ["0", "1", "2"]
    assert [int(ds[i]["labels"]) for i in range(2)] == [2, 0]
    named = TextClassificationDataset(path, label_names=["neg", "neu", "pos"])
    assert named.label_names == ["neg", "neu", "pos"]
    with pytest.raises(ValueError, match=r"label id 2, outside 0\.\.1"):
        TextClassificationDataset(path, label_names=["neg", "pos"])
    (tmp_path / "labels.json").write_text(json.dumps(["x", "y", "z"]))
    assert load_label_names(tmp_path) == ["x", "y", "z"]


def test_resolve_labels_rules() -> None:
    assert resolve_labels(["b", "a", "b"]) == ([1, 0, 1], ["a", "b"])
    assert resolve_labels(["b", 1]) == ([1, 0], ["1", "b"])  # mixed: all names
    assert resolve_labels(["pos", 0], ["neg", "pos"]) == ([1, 0], ["neg", "pos"])
    with pytest.raises(ValueError, match="unknown label 'maybe'"):
        resolve_labels(["maybe"], ["neg", "pos"])
    with pytest.raises(ValueError, match="must be str or int"):
        resolve_labels([True])
    with pytest.raises(ValueError, match="must be str or int"):
        resolve_labels([1.5])
    with pytest.raises(ValueError, match=">= 0"):
        resolve_labels([-1, 2])
    with pytest.raises(ValueError, match="duplicates"):
        resolve_labels(["a"], ["a", "a"])


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("e.jsonl", "", "holds no examples"),
        ("e.csv", "", "holds no examples"),
        ("e.jsonl", '{"text": "a", "label": 1}\n{"text": "b"}\n', r"e.jsonl:2: missing field"),
        ("e.jsonl", '{"text": "a", "label": 1}\nnot json\n', r"e.jsonl:2: not valid JSON"),
        ("e.jsonl", "[1, 2]\n", "expected a JSON object"),
        ("e.jsonl", '{"text": 5, "label": 1}\n', "is not a string"),
        ("e.csv", "body,label\nhello,1\n", r"missing column\(s\) \['text'\]"),
        ("e.txt", "hello", "unsupported file type"),
    ],
)
def test_classification_errors(tmp_path: Path, name: str, content: str, match: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=match):
        TextClassificationDataset(tmp_path / name)


def test_classification_other_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        TextClassificationDataset(tmp_path / "nope.jsonl")
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": "x"}])
    with pytest.raises(ValueError, match="max_length=2"):
        TextClassificationDataset(path, max_length=2)
    with pytest.raises(ValueError, match="unknown label 'x'"):
        TextClassificationDataset(path, label_names=["y"])
    # other field names
    other = write_jsonl(tmp_path / "o.jsonl", [{"body": "hi", "y": "k"}])
    ds = TextClassificationDataset(other, text_field="body", label_field="y")
    assert ds.label_names == ["k"] and ds[0]["input_ids"].tolist() == [1, 108, 109, 2]


# ----------------------------------------------------------------------------- language model
def test_lm_blocks_tile_the_corpus(tmp_path: Path) -> None:
    data = bytes(range(256)) * 3 + b"tail"
    (tmp_path / "a.txt").write_bytes(data)
    ds = LMDataset(tmp_path / "a.txt", block_size=16)
    tokens = [b + 4 for b in data]
    assert ds.num_tokens == len(tokens) == ds.num_bytes
    assert len(ds) == (len(tokens) - 16) // 15 + 1
    targets = []
    for i in range(len(ds)):
        item = ds[i]
        assert item["input_ids"].tolist() == tokens[15 * i : 15 * i + 16]
        assert torch.equal(item["labels"], item["input_ids"])
        targets += item["input_ids"][1:].tolist()  # what the shifted loss predicts
    # every token after the first is a target exactly once, in order, up to the cut-off tail
    assert targets == tokens[1 : 1 + len(targets)]
    assert len(tokens) - 1 - len(targets) < 15
    with pytest.raises(IndexError):
        ds[len(ds)]
    assert ds[-1]["input_ids"].tolist() == ds[len(ds) - 1]["input_ids"].tolist()


def test_lm_files_joined_by_eos(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.txt").write_text("de")
    ds = LMDataset([tmp_path / "a.txt", tmp_path / "b.txt"], block_size=6)
    assert ds.tokens.tolist() == [97 + 4, 98 + 4, 99 + 4, 2, 100 + 4, 101 + 4]
    assert ds.num_bytes == 5 and len(ds) == 1


def test_lm_random_offset_is_seeded(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(bytes(range(200)) * 5)
    ds = LMDataset(tmp_path / "a.txt", block_size=32, random_offset=True, seed=3)
    twin = LMDataset(tmp_path / "a.txt", block_size=32, random_offset=True, seed=3)
    offsets = []
    for epoch in range(8):
        ds.set_epoch(epoch)
        twin.set_epoch(epoch)
        assert ds.offset == twin.offset
        assert 0 <= ds.offset <= 30
        assert len(ds) == len(twin) == (1000 - 30 - 32) // 31 + 1  # same every epoch
        assert ds[len(ds) - 1]["input_ids"].shape == (32,)  # last block still full
        start = ds.offset + 2 * 31
        assert ds[2]["input_ids"].tolist() == ds.tokens[start : start + 32].tolist()
        offsets.append(ds.offset)
    assert len(set(offsets)) > 1  # the cut points move between epochs
    fixed = LMDataset(tmp_path / "a.txt", block_size=32)
    fixed.set_epoch(5)
    assert fixed.offset == 0


def test_lm_errors(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("short")
    with pytest.raises(ValueError, match="fewer than block_size=64"):
        LMDataset(tmp_path / "a.txt", block_size=64)
    with pytest.raises(ValueError, match="block_size=1"):
        LMDataset(tmp_path / "a.txt", block_size=1)
    with pytest.raises(FileNotFoundError, match="no text file"):
        LMDataset(tmp_path / "missing.txt", block_size=4)
    with pytest.raises(ValueError, match="no text files"):
        LMDataset([], block_size=4)


def test_lm_with_hf_tokenizer_chunked_encoding(tmp_path: Path) -> None:
    raw = RawTokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    lines = [f"w{i % 7} w{i % 5} w{i % 3}" for i in range(300)]
    raw.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[SEP]"]))
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = HFTokenizer(tmp_path)
    text = "\n".join(lines)
    whole = raw.encode(text).ids
    # cut into many ~50-character pieces at line ends: the same ids as one call
    assert _encode_long_text(tok, text, chunk_chars=50).tolist() == whole
    (tmp_path / "c.txt").write_text(text)
    ds = LMDataset(tmp_path / "c.txt", tok, block_size=10)
    assert ds.tokens.tolist() == whole and ds.num_tokens == 900


def test_lm_batches_through_collator(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(bytes(range(256)) * 2)
    ds = LMDataset(tmp_path / "a.txt", block_size=20)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=Collator(0, 8))
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 24)
    assert batch["attention_mask"].sum(1).tolist() == [20] * 4
    assert (batch["labels"][:, 20:] == -100).all()
    assert torch.equal(batch["labels"][:, :20], batch["input_ids"][:, :20])
