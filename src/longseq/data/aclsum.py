"""Summarisation of real long documents: ACLSum's ACL papers and their human summaries.

ACLSum (Takeshita et al., NAACL 2024; PyPI `aclsum` 0.1.2, MIT) ships its data inside the
wheel: `aclsum/dataset/{train,val,test}.jsonl` (100 / 50 / 100 papers, each with three human
summaries: challenge, approach, outcome) and `aclsum/dataset/paper_jsons/ID.json`, the paper's
full text parsed from the PDF (S2ORC's `pdf_parse`: abstract and body paragraphs with their
section names). The package itself needs Python >= 3.11 to install, so the builder reads the
wheel as a zip file (no install, no import):

    pip download --no-deps aclsum==0.1.2 -d /tmp/aclsum
    longseq data aclsum --source /tmp/aclsum --out data/aclsum

`--source` is the wheel, a folder holding it, or the installed package's folder; without it
the installed `aclsum` package is used when there is one.

The document is the title, the abstract and the body paragraphs in order, each section's name
on its own line before its first paragraph. The reference is the three summaries joined in
the order challenge, approach, outcome (one space between them); each is kept under
`summaries` too. ACLSum's own split is kept. A paper whose summary appears verbatim in its
text (whitespace collapsed) would be dropped; none does. Files, one paper per line:

    {"id": "2020.acl-main.47", "title": "...", "text": "...", "summary": "...",
     "summaries": {"challenge": ..., "approach": ..., "outcome": ...}, "instruction": "..."}

plus `stats.json` and `README.md`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from longseq.data.manpages import verbatim, write_jsonl
from longseq.data.real import SourceNotFoundError, _length_stats

SPLITS = ("train", "val", "test")
ASPECTS = ("challenge", "approach", "outcome")
PREFIX = "aclsum/dataset/"
INSTRUCTION = (
    "Read this scientific paper, then summarise it in three sentences: the challenge it "
    "addresses, its approach, and its outcome."
)
INSTALL = (
    "the ACLSum data was not found{where}; fetch the wheel (the data is inside it):\n"
    "  {python} -m pip download --no-deps aclsum==0.1.2 -d /tmp/aclsum\n"
    "  longseq data aclsum --source /tmp/aclsum --out DIR"
)


class Wheel:
    """Reads `aclsum/dataset/...` members from the wheel (zip) or an installed package."""

    def __init__(self, source: str | Path | None) -> None:
        self.zip: zipfile.ZipFile | None = None
        self.folder: Path | None = None
        hint = lambda where: INSTALL.format(where=where, python=sys.executable)  # noqa: E731
        if source is None:
            spec = importlib.util.find_spec("aclsum")
            if spec is None or not spec.submodule_search_locations:
                raise SourceNotFoundError(hint(" (no --source, and aclsum is not installed)"))
            source = Path(next(iter(spec.submodule_search_locations))).parent
        root = Path(source)
        if root.is_dir():
            wheels = sorted(root.glob("aclsum-*.whl"))
            if wheels:
                root = wheels[-1]
            else:
                for cand in (root.parent, root):
                    if (cand / PREFIX / "test.jsonl").is_file():
                        self.folder = cand
                        return
                raise SourceNotFoundError(hint(f" in {root}"))
        if not root.is_file() or not zipfile.is_zipfile(root):
            raise SourceNotFoundError(hint(f" at {root} (not a wheel)"))
        self.zip = zipfile.ZipFile(root)
        if PREFIX + "test.jsonl" not in self.zip.namelist():
            raise SourceNotFoundError(hint(f" inside {root} (no {PREFIX}test.jsonl)"))

    def read(self, member: str) -> str:
        if self.zip is not None:
            return self.zip.read(PREFIX + member).decode("utf-8")
        assert self.folder is not None
        return (self.folder / PREFIX / member).read_text(encoding="utf-8")


def paper_text(title: str, paper: dict[str, Any]) -> str:
    """Title, abstract and body paragraphs (S2ORC pdf_parse), each section's name once."""
    parse = paper.get("pdf_parse") or {}
    parts = [title.strip()]
    abstract = " ".join(p["text"] for p in parse.get("abstract") or [] if p.get("text"))
    if not abstract and isinstance(paper.get("abstract"), str):
        abstract = paper["abstract"]
    if abstract.strip():
        parts.append("Abstract\n" + abstract.strip())
    section = None
    for para in parse.get("body_text") or []:
        text = (para.get("text") or "").strip()
        if not text:
            continue
        name = (para.get("section") or "").strip()
        if name and name != section:
            num = (para.get("sec_num") or "").strip()
            parts.append(f"{num} {name}".strip())
            section = name
        parts.append(text)
    return "\n\n".join(parts) + "\n"


def build(
    out: str | Path, source: str | Path | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Write train/val/test.jsonl, stats.json and README.md to `out`."""
    wheel = Wheel(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {"dataset": "aclsum", "source": str(source), "splits": {}}
    dropped = 0
    for split in SPLITS:
        records = []
        for line in wheel.read(f"{split}.jsonl").splitlines():
            if not line.strip():
                continue
            entry = json.loads(line)
            paper = json.loads(wheel.read(f"paper_jsons/{entry['id']}.json"))
            summaries = {a: " ".join(entry["summary"][a].split()) for a in ASPECTS}
            text = paper_text(entry["title"], paper)
            summary = " ".join(summaries[a] for a in ASPECTS)
            if any(verbatim(s, text) for s in (summary, *summaries.values())):
                dropped += 1
                continue
            records.append(
                {
                    "id": entry["id"],
                    "title": entry["title"],
                    "text": text,
                    "summary": summary,
                    "summaries": summaries,
                    "instruction": INSTRUCTION,
                }
            )
        write_jsonl(out / f"{split}.jsonl", records)
        stats["splits"][split] = {
            "examples": len(records),
            "text_characters": _length_stats([len(r["text"]) for r in records]),
            "summary_characters": _length_stats([len(r["summary"]) for r in records]),
        }
        if progress:
            print(f"aclsum: {split} {len(records)} papers", file=sys.stderr)
    stats["dropped_verbatim"] = dropped
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    s = stats["splits"]
    (out / "README.md").write_text(
        "# ACLSum summarisation (longseq data aclsum)\n\n"
        "ACL papers (title, abstract, body from the PDF parse) with three human summaries "
        "each (challenge, approach, outcome), joined as the reference. ACLSum's split: "
        + " / ".join(f"{s[k]['examples']} {k}" for k in SPLITS)
        + f" papers; median {s['test']['text_characters'].get('median', '-')} characters per "
        f"test paper; {dropped} dropped (a summary verbatim in the paper). "
        "Format: `longseq/data/aclsum.py`. Source: ACLSum (PyPI aclsum 0.1.2, MIT).\n"
    )
    return stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--source",
        help="the aclsum wheel, a folder holding it (pip download --no-deps aclsum==0.1.2), "
        "or the installed package's folder; default: the installed package",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    try:
        stats = build(args.out, args.source, progress=args.progress)
    except SourceNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v['examples']}" for k, v in stats["splits"].items())
    print(f"papers: {counts}; wrote {args.out}")
    return 0


__all__ = ["build", "paper_text"]
