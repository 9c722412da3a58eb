"""`longseq data manpages` and `longseq data aclsum` on small stand-ins for their sources:
the splits hold out whole packages (ACLSum: its own split), stubs and symlinks are skipped,
and no reference summary appears verbatim in its document."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from longseq.cli import main
from longseq.data import aclsum, manpages

needs_man = pytest.mark.skipif(
    any(shutil.which(t) is None for t in manpages.TOOLS), reason="man-db / col not installed"
)


def page(name: str, desc: str, body: str) -> bytes:
    return (
        f'.TH {name.upper()} 1 "2024" "pkg" "Test Manual"\n.SH NAME\n{name} \\- {desc}\n'
        f".SH DESCRIPTION\n{body}\n"
    ).encode()


def write_page(root: Path, pkg: str, name: str, content: bytes) -> Path:
    folder = root / pkg / "usr/share/man/man1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.1.gz"
    path.write_bytes(gzip.compress(content))
    return path


def make_source(root: Path) -> None:
    for pkg in ("alpha", "beta", "gamma"):
        for i in range(2):
            name = f"{pkg}{i}"
            body = f"The {name} program frobnicates widgets number {i} of the {pkg} family."
            write_page(root, pkg, name, page(name, f"frobnicate {pkg} widgets quickly", body))
    # dropped: the description verbatim in the body
    copied = page("copycat", "copy cats around", "This tool will copy cats around the house.")
    write_page(root, "alpha", "copycat", copied)
    # skipped: a .so stub and a symbolic link
    write_page(root, "beta", "stub", b'.\\" a comment\n.so man1/beta0.1\n')
    (root / "beta/usr/share/man/man1/link.1.gz").symlink_to("beta1.1.gz")


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_man
def test_manpages_builder(tmp_path: Path):
    make_source(tmp_path / "src")
    out = tmp_path / "out"
    stats = manpages.build(out, tmp_path / "src", test_packages=("gamma",),
                           val_packages=("beta",), workers=1, progress=False)  # fmt: skip
    splits = {s: read(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    # whole packages per split
    assert {r["package"] for r in splits["train"]} == {"alpha"}
    assert {r["package"] for r in splits["val"]} == {"beta"}
    assert {r["package"] for r in splits["test"]} == {"gamma"}
    # stubs and symlinks never read; the verbatim page dropped, and counted
    assert stats["pages"] == 7
    assert stats["dropped"] == {"summary verbatim in the body": 1}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    rec = next(r for r in splits["test"] if r["name"] == "gamma1")
    assert rec["summary"] == "frobnicate gamma widgets quickly"
    assert rec["id"] == "gamma/man1/gamma1.1" and rec["section"] == "1"
    assert "frobnicates widgets number 1" in rec["text"]
    assert "NAME" not in rec["text"].split()  # the NAME section is not in the document
    for recs in splits.values():
        for r in recs:
            assert not manpages.verbatim(r["summary"], r["text"])
    assert (out / "README.md").is_file() and json.loads((out / "stats.json").read_text())


@needs_man
def test_manpages_command_errors(tmp_path: Path, capsys):
    make_source(tmp_path / "src")
    code = main(["data", "manpages", "--source", str(tmp_path / "src"), "--out",
                 str(tmp_path / "o"), "--test-packages", "nosuch", "--no-progress"])  # fmt: skip
    assert code == 2 and "held-out package 'nosuch'" in capsys.readouterr().err
    assert main(["data", "manpages", "--source", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "o")]) == 2  # fmt: skip
    assert "apt-get download" in capsys.readouterr().err


def test_without_name_and_verbatim():
    text = "LS(1)\n\nNAME\n       ls - list\n\nSYNOPSIS\n       ls [x]\n"
    assert manpages.without_name(text) == "LS(1)\n\nSYNOPSIS\n       ls [x]\n"
    assert manpages.verbatim("list  directory", "we list\n directory contents")
    assert not manpages.verbatim("List directory", "we list directory contents")


def make_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", 3), ("val", 1), ("test", 2)):
            lines = []
            for i in range(n):
                pid = f"{split}-{i}"
                summary = {a: f"The {a} of paper {pid} is new." for a in aclsum.ASPECTS}
                if pid == "test-1":  # a summary copied from the paper: dropped
                    summary["outcome"] = "Results improve by ten points."
                lines.append(json.dumps({"id": pid, "title": f"Paper {pid}", "summary": summary}))
                paper = {"pdf_parse": {
                    "abstract": [{"text": "We study things."}],
                    "body_text": [
                        {"text": "Intro text.", "section": "Introduction", "sec_num": "1"},
                        {"text": "More intro.", "section": "Introduction", "sec_num": "1"},
                        {"text": "Results improve by ten points.", "section": "Results",
                         "sec_num": "2"},
                    ]}}  # fmt: skip
                z.writestr(f"aclsum/dataset/paper_jsons/{pid}.json", json.dumps(paper))
            z.writestr(f"aclsum/dataset/{split}.jsonl", "\n".join(lines) + "\n")


def test_aclsum_builder(tmp_path: Path, capsys):
    make_wheel(tmp_path / "aclsum-0.1.2-py3-none-any.whl")
    out = tmp_path / "out"
    assert main(["data", "aclsum", "--source", str(tmp_path), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    splits = {s: read(out / f"{s}.jsonl") for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert json.loads((out / "stats.json").read_text())["dropped_verbatim"] == 1
    rec = splits["train"][0]
    assert rec["text"] == (
        "Paper train-0\n\nAbstract\nWe study things.\n\n1 Introduction\n\nIntro text.\n\n"
        "More intro.\n\n2 Results\n\nResults improve by ten points.\n"
    )
    assert rec["summary"] == " ".join(rec["summaries"][a] for a in aclsum.ASPECTS)
    for recs in splits.values():
        for r in recs:
            assert not manpages.verbatim(r["summary"], r["text"])
    assert main(["data", "aclsum", "--source", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "pip download --no-deps aclsum" in capsys.readouterr().err
