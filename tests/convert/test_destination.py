"""convert and longify never write into their source, nor over a folder they did not write."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from longseq import cli
from longseq.models import ModelConfig, build_model


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    cfg = ModelConfig(
        architecture="encoder",
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_length=32,
        vocab_size=40,
    )
    src = tmp_path / "model"
    build_model(cfg, seed=0).save_pretrained(src)
    return src


def longify(src: Path, dst: Path, *extra: str) -> int:
    return cli.main(
        [
            "longify",
            str(src),
            str(dst),
            "--max-length",
            "64",
            "--attention",
            "longformer",
            "--window",
            "8",
            "--no-check",
            *extra,
        ]
    )


@pytest.mark.parametrize(
    ("where", "force", "message"),
    [
        ("same", False, "is SRC or inside it"),
        ("same", True, "is SRC or inside it"),
        ("inside", True, "is SRC or inside it"),
        ("parent", True, "contains SRC"),
        ("file", False, "is a file"),
        ("foreign", False, "pass --force"),
        ("foreign", True, "not a longseq model folder"),
    ],
)
def test_longify_refuses(source: Path, tmp_path: Path, capsys, where, force, message) -> None:
    dst = {
        "same": source,
        "inside": source / "sub",
        "parent": tmp_path,
        "file": tmp_path / "a-file",
        "foreign": tmp_path / "notes",
    }[where]
    if where == "file":
        dst.write_text("x")
    if where == "foreign":
        dst.mkdir()
        (dst / "mine.txt").write_text("keep me")
    before = digest(tmp_path)
    assert longify(source, dst, *(["--force"] if force else [])) == 2
    assert message in capsys.readouterr().err
    assert digest(tmp_path) == before  # nothing written, nothing removed


def test_longify_force_replaces_its_own_output(source: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "long"
    assert longify(source, dst) == 0
    (dst / "stale.txt").write_text("from before")
    assert longify(source, dst) == 2
    assert "--force" in capsys.readouterr().err
    before = digest(source)
    assert longify(source, dst, "--force") == 0
    assert digest(source) == before
    assert not (dst / "stale.txt").exists()  # the folder was replaced, not written into
    assert not dst.with_name("long.tmp").exists() and not dst.with_name("long.old").exists()
