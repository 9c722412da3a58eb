"""Summarisation of real long documents: Debian manual pages and their NAME lines.

Source: the man pages of seven Debian packages, fetched and unpacked without root:

    cd /tmp && apt-get download manpages manpages-dev perl-doc libssl-doc git-man \\
        tcl8.6-doc libx11-doc
    for f in /tmp/*.deb; do p=$(basename "$f"); dpkg-deb -x "$f" /tmp/man/"${p%%_*}"; done
    longseq data manpages --source /tmp/man --out data/manpages

`--source` is the folder holding one folder per package (each an unpacked .deb, the package
named by the folder), or a folder of the .deb files themselves (then each is unpacked into a
temporary folder with `dpkg-deb -x`, named by its Package field).

Each regular file under `usr/share/man/man*/` is a page; symbolic links and `.so` stubs (a
page that only includes another) are skipped. A page is rendered by man-db and util-linux,
`man -l FILE | col -bx` (80 columns, plain text), and its reference summary is the NAME line's
description as man-db's own parser reads it (`lexgrog FILE`: "name - description"; the part
after the first " - "). The document is the rendered page without its NAME section. Pages are
dropped when lexgrog finds no description, when the body is empty, or when the description
appears verbatim in the body (whitespace collapsed, case kept): a summary one can copy out of
the document tests nothing.

Splits hold out whole packages: test = git-man and tcl8.6-doc, val = manpages, train = the
rest (manpages-dev, libssl-doc, libx11-doc, perl-doc), so no test page shares a package (and
its house style and cross-references) with training. Files (`train.jsonl`, `val.jsonl`,
`test.jsonl`), one page per line:

    {"id": "git-man/man1/git-add.1", "package": "git-man", "section": "1",
     "name": "git-add", "text": "<the rendered page without NAME>",
     "summary": "Add file contents to the index", "instruction": "..."}

plus `stats.json` and `README.md`. `instruction` is what the summarisation task asks the
model (`longseq.tasks.summarise`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from longseq.data.real import SourceNotFoundError, _length_stats, _progress

SPLITS = ("train", "val", "test")
PACKAGES = ("manpages", "manpages-dev", "perl-doc", "libssl-doc", "git-man", "tcl8.6-doc",
            "libx11-doc")  # fmt: skip
TEST_PACKAGES = ("git-man", "tcl8.6-doc")
VAL_PACKAGES = ("manpages",)
INSTRUCTION = (
    "Read this manual page, then write its one-line description: the short phrase that "
    "says what it is, as on the NAME line of a man page."
)
INSTALL = (
    "no man pages found{where}; fetch the Debian packages (no root needed):\n"
    "  cd /tmp && apt-get download " + " ".join(PACKAGES) + "\n"
    '  for f in /tmp/*.deb; do p=$(basename "$f"); dpkg-deb -x "$f" /tmp/man/"${{p%%_*}}"; done\n'
    "  longseq data manpages --source /tmp/man --out DIR\n"
    "(or pass --source the folder of the .deb files)"
)
TOOLS = ("man", "col", "lexgrog")


def check_tools(extra: tuple[str, ...] = ()) -> None:
    missing = [t for t in (*TOOLS, *extra) if shutil.which(t) is None]
    if missing:
        raise SourceNotFoundError(
            f"{', '.join(missing)} not found: the man pages are rendered by man-db "
            "(man, lexgrog) and util-linux (col); apt-get install man-db bsdextrautils"
        )


def package_folders(source: str | Path, scratch: Path) -> dict[str, Path]:
    """Package name -> its unpacked tree (holding usr/share/man)."""
    root = Path(source)
    if not root.is_dir():
        raise SourceNotFoundError(INSTALL.format(where=f" in {root} (not a folder)"))
    debs = sorted(root.glob("*.deb"))
    out: dict[str, Path] = {}
    for deb in debs:
        check_tools(("dpkg-deb",))
        name = subprocess.run(
            ["dpkg-deb", "-f", str(deb), "Package"], capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch / name)], check=True)
        out[name] = scratch / name
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if (sub / "usr/share/man").is_dir():
            out.setdefault(sub.name, sub)
    if not out:
        raise SourceNotFoundError(INSTALL.format(where=f" in {root}"))
    return out


def is_stub(path: Path) -> bool:
    """A `.so` include: the page's first request line is `.so other/page`."""
    import gzip

    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    for line in raw.decode("utf-8", errors="replace").splitlines():
        if line.startswith(('.\\"', "'\\\"")) or not line.strip():
            continue
        return line.startswith(".so ")
    return True  # empty


def pages(tree: Path) -> list[Path]:
    """Regular files under usr/share/man/man*/ that are not .so stubs, sorted."""
    found = []
    for path in sorted((tree / "usr/share/man").glob("man*/*")):
        if path.is_symlink() or not path.is_file() or is_stub(path):
            continue
        found.append(path)
    return found


_ENV = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}


def render(path: Path) -> str:
    """`man -l FILE | col -bx`: the page as plain text, 80 columns."""
    man = subprocess.Popen(
        ["man", "-l", str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_ENV
    )
    col = subprocess.run(["col", "-bx"], stdin=man.stdout, capture_output=True, env=_ENV)
    man.stdout.close()  # type: ignore[union-attr]
    man.wait()
    return col.stdout.decode("utf-8", errors="replace")


def description(path: Path) -> tuple[str, str] | None:
    """(name, description) from man-db's NAME parser, `lexgrog FILE` (first entry)."""
    res = subprocess.run(["lexgrog", str(path)], capture_output=True, env=_ENV)
    line = res.stdout.decode("utf-8", errors="replace").split("\n", 1)[0]
    m = re.search(r': "(.*)"$', line)
    if res.returncode != 0 or m is None or " - " not in m.group(1):
        return None
    name, desc = m.group(1).split(" - ", 1)
    desc = " ".join(desc.split())
    return (name.strip(), desc) if desc else None


def without_name(text: str) -> str:
    """The rendered page without its NAME section (heading to the next heading)."""
    lines = text.splitlines()
    out, skipping = [], False
    for line in lines:
        heading = bool(line) and not line[0].isspace()
        if heading and line.strip() == "NAME":
            skipping = True
            continue
        if skipping and heading:
            skipping = False
        if not skipping:
            out.append(line.rstrip())
    return "\n".join(out).strip() + "\n"


def squash(text: str) -> str:
    return " ".join(text.split())


def verbatim(summary: str, text: str) -> bool:
    """Whether `summary` appears in `text`, whitespace collapsed (what the builder drops)."""
    return squash(summary) in squash(text)


def page_record(package: str, tree: Path, path: Path) -> tuple[dict[str, Any] | None, str]:
    """The page's record, or None and why it was dropped."""
    named = description(path)
    if named is None:
        return None, "no NAME description"
    body = without_name(render(path))
    if not body.strip():
        return None, "empty body"
    if verbatim(named[1], body):
        return None, "summary verbatim in the body"
    rel = path.relative_to(tree / "usr/share/man").as_posix().removesuffix(".gz")
    section = path.parent.name.removeprefix("man")
    return {
        "id": f"{package}/{rel}",
        "package": package,
        "section": section,
        "name": named[0],
        "text": body,
        "summary": named[1],
        "instruction": INSTRUCTION,
    }, ""


def split_of(package: str, test: tuple[str, ...], val: tuple[str, ...]) -> str:
    return "test" if package in test else "val" if package in val else "train"


def build(
    out: str | Path,
    source: str | Path | None = None,
    *,
    test_packages: tuple[str, ...] = TEST_PACKAGES,
    val_packages: tuple[str, ...] = VAL_PACKAGES,
    workers: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Render every page of the packages in `source`; write the splits, stats.json, README."""
    if source is None:
        raise SourceNotFoundError(INSTALL.format(where=" (no --source given)"))
    if set(test_packages) & set(val_packages):
        raise ValueError(f"a package cannot be in both test and val: {test_packages}, "
                         f"{val_packages}")  # fmt: skip
    check_tools()
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="longseq-man-") as scratch:
        trees = package_folders(source, Path(scratch))
        for name in (*test_packages, *val_packages):
            if name not in trees:
                raise ValueError(
                    f"held-out package {name!r} is not in {source} (found: {', '.join(trees)})"
                )
        jobs = [(pkg, tree, path) for pkg, tree in trees.items() for path in pages(tree)]
        with ThreadPoolExecutor(max(1, workers)) as pool:
            results = list(_progress(pool.map(lambda j: page_record(*j), jobs), progress, "pages"))
    records: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    dropped: Counter[str] = Counter()
    for (pkg, _tree, _path), (rec, why) in zip(jobs, results, strict=True):
        if rec is None:
            dropped[why] += 1
        else:
            records[split_of(pkg, test_packages, val_packages)].append(rec)
    out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {
        "dataset": "manpages",
        "source": str(source),
        "pages": len(jobs),
        "dropped": dict(dropped),
        "packages": {s: sorted({r["package"] for r in records[s]}) for s in SPLITS},
        "splits": {},
    }
    for split in SPLITS:
        write_jsonl(out / f"{split}.jsonl", records[split])
        stats["splits"][split] = {
            "examples": len(records[split]),
            "text_characters": _length_stats([len(r["text"]) for r in records[split]]),
            "summary_characters": _length_stats([len(r["summary"]) for r in records[split]]),
        }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "README.md").write_text(_readme(stats))
    return stats


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _readme(stats: dict[str, Any]) -> str:
    s = stats["splits"]
    rows = "\n".join(
        f"| {k} | {', '.join(stats['packages'][k])} | {v['examples']} | "
        f"{v['text_characters'].get('median', '-')} | "
        f"{v['summary_characters'].get('median', '-')} |"
        for k, v in s.items()
    )
    drops = ", ".join(f"{n} {why}" for why, n in stats["dropped"].items()) or "none"
    return f"""# Man-page summarisation (longseq data manpages)

Debian manual pages rendered with `man -l FILE | col -bx`; the reference summary is the NAME
line's description (`lexgrog`), the document the page without its NAME section. Whole
packages are held out for val and test. {stats["pages"]} pages read; dropped: {drops}.

| split | packages | pages | median characters | median summary characters |
|---|---|---:|---:|---:|
{rows}

Format: `longseq/data/manpages.py`. Source: {stats["source"]}.
"""


# ----------------------------------------------------------------------------- command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--source",
        required=True,
        help="the folder of unpacked packages (one folder each, named by the package), or of "
        "the .deb files (see docs/data.md)",
    )
    p.add_argument(
        "--test-packages",
        default=",".join(TEST_PACKAGES),
        help=f"packages held out for test (default {','.join(TEST_PACKAGES)})",
    )
    p.add_argument(
        "--val-packages",
        default=",".join(VAL_PACKAGES),
        help=f"packages held out for val (default {','.join(VAL_PACKAGES)})",
    )
    p.add_argument("--workers", type=int, default=2, help="pages rendered at once (default 2)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    names = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    try:
        stats = build(
            args.out,
            args.source,
            test_packages=names(args.test_packages),
            val_packages=names(args.val_packages),
            workers=args.workers,
            progress=args.progress,
        )
    except (SourceNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v['examples']}" for k, v in stats["splits"].items())
    print(f"pages: {counts}; dropped {sum(stats['dropped'].values())}; wrote {args.out}")
    return 0


__all__ = ["build", "description", "page_record", "render", "verbatim", "without_name"]
