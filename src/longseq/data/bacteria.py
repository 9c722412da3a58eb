"""Coding sequence per base of a bacterial genome: `longseq data genome-cds`.

Source (a Debian package, fetched by name, never a hub): `any2fasta-examples` ships the NCBI
annotation of *Leptospira kirschneri* serovar H1 as GenBank (`test.gbk.gz`): 75 contigs,
4,594,734 bp, 4,162 CDS with their strand. GenBank is read with Biopython (`Bio.SeqIO`).

Each base is labelled

    0 non-coding   in no CDS (intergenic, RNA genes, pseudogenes)
    1 cds+         in a CDS read on the + strand
    2 cds-         in a CDS read on the - strand

and 255 (ignored by the loss and the metric) where CDSs of both strands overlap (about 0.1%
of the bases). Only contigs of at least `MIN_CONTIG` (16,384) bp are used (41 of them,
4.44 Mbp), so that every context length up to 16K reads the same contigs; windows never
cross a contig's end. Split by whole contig: sorted by length (longest first), contig i goes
to validation when i % 10 == 8, to test when i % 10 == 9, else to training (3.84 / 0.31 /
0.29 Mbp). A base's label needs the reading frame (codon statistics over a few hundred bp)
and, to be sure of a gene's strand and ends, the start and stop codons that bound its open
reading frame, about 1 kb apart: the task has a reason to read long context.

Files, as `longseq data genome` writes them: `{split}.fa` (one record per contig, upper
case) and `{split}_labels.npy` (uint8 per base, the records' bases in order), `labels.json`,
`stats.json`, `README.md`. `GenomeWindows` cuts windows of any length from them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from longseq.data.genome import UNLABELLED
from longseq.data.real import SPLITS, SourceNotFoundError

PACKAGE = "any2fasta-examples"
FILE = "usr/share/doc/any2fasta/examples/test.gbk.gz"
LABELS = ("non-coding", "cds+", "cds-")
BOTH = UNLABELLED  # both strands coding: ignored
MIN_CONTIG = 16_384
INSTALL = (
    "the Leptospira genome and its annotation come from a Debian package; fetch and unpack it:\n"
    f"  cd /tmp && apt-get download {PACKAGE}\n"
    f"  dpkg-deb -x /tmp/{PACKAGE}_*.deb /tmp/lepto\n"
    "  longseq data genome-cds --source /tmp/lepto --out DIR\n"
    f"(or `apt-get install {PACKAGE}` and omit --source)"
)


@dataclass(frozen=True)
class Contig:
    id: str
    seq: str  # upper case
    cds: tuple[tuple[int, int, int], ...]  # (start, end, strand +1/-1) of each CDS part


def find_source(source: str | Path | None = None) -> Path:
    path = (Path(source) if source is not None else Path("/")) / FILE
    if not path.is_file():
        raise SourceNotFoundError(f"not found: {path}\n{INSTALL}")
    return path


def read_genbank(path: Path) -> list[Contig]:
    """Every record of a GenBank file (gzip or plain) with its CDS parts (a CDS joined from
    several parts, across the origin say, gives each part)."""
    from Bio import SeqIO  # Biopython: imported here, so `longseq` starts without it

    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as f:
        for rec in SeqIO.parse(f, "genbank"):
            parts = []
            for feature in rec.features:
                if feature.type != "CDS":
                    continue
                for part in feature.location.parts:
                    if part.strand not in (1, -1):
                        raise ValueError(f"{path}: {rec.id}: a CDS part without a strand")
                    parts.append((int(part.start), int(part.end), int(part.strand)))
            out.append(Contig(rec.id, str(rec.seq).upper(), tuple(parts)))
    return out


def cds_labels(length: int, cds: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    """uint8 per base: 0 non-coding, 1 cds+, 2 cds-, BOTH where both strands code."""
    plus = np.zeros(length, dtype=bool)
    minus = np.zeros(length, dtype=bool)
    for start, end, strand in cds:
        (plus if strand == 1 else minus)[start:end] = True
    labels = np.zeros(length, dtype=np.uint8)
    labels[plus] = 1
    labels[minus] = 2
    labels[plus & minus] = BOTH
    return labels


def split_contigs(contigs: list[Contig], min_length: int = MIN_CONTIG) -> dict[str, list[Contig]]:
    """Contigs of at least `min_length` bp by split: longest first, i % 10 == 8 validation,
    i % 10 == 9 test, the rest training."""
    kept = sorted((c for c in contigs if len(c.seq) >= min_length), key=lambda c: -len(c.seq))
    out: dict[str, list[Contig]] = {s: [] for s in SPLITS}
    for i, c in enumerate(kept):
        out["val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(c)
    if not all(out.values()):
        raise ValueError(f"too few contigs of {min_length:,}+ bp to fill every split")
    return out


def build(
    out: str | Path, source: str | Path | None = None, progress: bool = True
) -> dict[str, object]:
    """Write the task's files into `out`; returns the stats (also in stats.json)."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    path = find_source(source)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    contigs = read_genbank(path)
    splits = split_contigs(contigs)
    stats: dict[str, object] = {
        "dataset": "genome-cds",
        "source": f"{PACKAGE}: {FILE}",
        "contigs": len(contigs),
        "splits": {},
    }
    for split, chosen in splits.items():
        labels = np.concatenate([cds_labels(len(c.seq), c.cds) for c in chosen])
        records = [SeqRecord(Seq(c.seq), id=c.id, description="") for c in chosen]
        with (folder / f"{split}.fa").open("w") as f:
            SeqIO.write(records, f, "fasta")
        np.save(folder / f"{split}_labels.npy", labels, allow_pickle=False)
        counts = {name: int((labels == k).sum()) for k, name in enumerate(LABELS)}
        stats["splits"][split] = {  # type: ignore[index]
            "contigs": [c.id for c in chosen],
            "bases": counts,
            "both_strands": int((labels == BOTH).sum()),
        }
        if progress:
            print(f"{split}: {len(chosen)} contigs, {len(labels):,} bp", file=sys.stderr)
    (folder / "labels.json").write_text(json.dumps(list(LABELS)) + "\n")
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (folder / "README.md").write_text(
        "# genome-cds: coding sequence per base, Leptospira kirschneri (NCBI annotation)\n\n"
        f"Built by `longseq data genome-cds` from the Debian package {PACKAGE}. Labels per "
        "base (`{split}_labels.npy`, uint8): 0 non-coding, 1 CDS on the + strand, 2 CDS on "
        "the - strand, 255 both strands (ignored). Whole contigs of 16,384+ bp per split; "
        "see stats.json.\n"
    )
    return stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--source", help="root of the unpacked package (default: the installed one, under /)"
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    try:
        stats = build(args.out, args.source, args.progress)
    except SourceNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in stats["splits"].items():  # type: ignore[union-attr]
        print(f"{split}: {len(s['contigs'])} contigs, bases {s['bases']}")
    print(f"wrote {args.out} (see README.md, stats.json)")
    return 0


__all__ = ["LABELS", "Contig", "build", "cds_labels", "read_genbank", "split_contigs"]
