"""The recall generator: labels checked by an independent solver, distances, files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from longseq.cli import main
from longseq.data import recall
from longseq.data.recall import IGNORE, RecallDataset, RecallSpec


def solve(input_ids: list[int], token_type_ids: list[int]) -> dict[int, tuple[int, int]]:
    """Independent of the generator: for every query (a token carrying no value that some
    earlier value-carrying token repeats), the value and the distance of that token."""
    last_pair: dict[int, tuple[int, int]] = {}  # token -> (position, value)
    answers = {}
    for i, (tok, typ) in enumerate(zip(input_ids, token_type_ids, strict=True)):
        if typ > 0:
            last_pair[tok] = (i, typ - 1)
        elif tok in last_pair:
            pos, value = last_pair[tok]
            answers[i] = (value, i - pos)
    return answers


SPEC = RecallSpec(length=64, pairs=4, keys=6, values=3, filler=5, distances=((1, 4), (5, 60)))


def test_labels_match_an_independent_solver() -> None:
    for ex in recall.generate(SPEC, 200, seed=3):
        f = recall.features(ex)
        answers = solve(f["input_ids"], f["token_type_ids"])
        labelled = {
            i: (lab, f["distance"][i]) for i, lab in enumerate(f["labels"]) if lab != IGNORE
        }
        assert answers == labelled
        assert len(labelled) == SPEC.pairs
        keys = [k for k, *_ in ex["pairs"]]
        assert len(set(keys)) == len(keys)  # distinct keys: one answer per query
        # filler never collides with keys, so a query can only mean its pair
        key_ids = {SPEC.key_id(k) for k in range(SPEC.keys)}
        others = [t for i, t in enumerate(f["input_ids"]) if i not in labelled]
        assert sum(t in key_ids for t in others) == SPEC.pairs


def test_distances_follow_the_ranges() -> None:
    dists = [q - p for ex in recall.generate(SPEC, 500, seed=0) for _k, _v, p, q in ex["pairs"]]
    assert all(1 <= d <= 60 for d in dists)
    near = sum(d <= 4 for d in dists) / len(dists)
    assert 0.4 < near < 0.6  # a range is chosen uniformly, then a distance in it
    assert recall.generate(SPEC, 5, seed=1) == recall.generate(SPEC, 5, seed=1)
    assert recall.generate(SPEC, 5, seed=1) != recall.generate(SPEC, 5, seed=2)


def test_files_round_trip(tmp_path: Path) -> None:
    assert (
        main(
            [
                "data",
                "recall",
                "--out",
                str(tmp_path),
                "--length",
                "64",
                "--pairs",
                "4",
                "--keys",
                "6",
                "--values",
                "3",
                "--distances",
                "1:4,5:60",
                "--train",
                "20",
                "--val",
                "5",
                "--test",
                "7",
            ]
        )
        == 0
    )
    assert recall.read_spec(tmp_path).distances == ((1, 4), (5, 60))
    ds = RecallDataset(recall.split_path(tmp_path, "test"))
    assert len(ds) == 7
    item = ds[0]
    assert set(item) == {"input_ids", "token_type_ids", "labels"}
    assert item["input_ids"].shape == (64,) and item["labels"].dtype == torch.long
    assert int((item["labels"] != IGNORE).sum()) == 4
    with pytest.raises(ValueError, match="never cut"):
        RecallDataset(recall.split_path(tmp_path, "test"), max_length=32)


def test_bad_lines_and_specs(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    ex = recall.generate(SPEC, 1, seed=0)[0]
    ex["pairs"][0][3] = ex["pairs"][0][2]  # query at its own pair's position
    bad.write_text(json.dumps(recall.generate(SPEC, 1, seed=1)[0]) + "\n" + json.dumps(ex) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a recall example"):
        recall.read_split(bad)
    with pytest.raises(ValueError, match="distinct keys"):
        RecallSpec(pairs=9, keys=8)
    with pytest.raises(ValueError, match="length - 1"):
        RecallSpec(length=64, distances=((1, 64),))
    with pytest.raises(ValueError, match="LOW:HIGH"):
        recall.parse_ranges("1-4")
    assert main(["data", "recall", "--out", str(tmp_path / "x"), "--pairs", "0"]) == 2
    assert "pairs must be a positive integer" in capsys.readouterr().err
