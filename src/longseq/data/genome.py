"""Real annotated DNA: `longseq data genome`, BigBird's genomics application on the fruit fly.

Sources (Debian packages, fetched by name, never a hub):

- `augustus-doc`: chromosome arm 2R of the fruit fly (dm3 assembly), 21,146,708 bp, repeats
  soft-masked in lower case (normalised to upper case here: the case would otherwise tell
  a model where the repeats are, which is not the sequence's own signal);
- `chromhmm-example`: RefSeq gene and exon intervals on dm3 (BED, 3 columns) and TSS
  positions with their strand;
- `r-bioc-biostrings`: the 2,000 bp upstream of each RefSeq TSS (dm3), the BigBird paper's
  promoter regions; those on chr2R match chr2R.fa exactly (checked while building).

FASTA is read with Biopython (`Bio.SeqIO`); a BED file's first three tab-separated columns
are `chrom, start, end` (0-based, end excluded).

Two tasks, both split by position so that no test base lies in a training window:
chr2R[0, 17 Mbp) train, [17, 19 Mbp) validation, [19 Mbp, end) test.

(a) Per-base labelling. Each base is exon (in a RefSeq exon), intron (in a gene, not in an
    exon) or intergenic: `{split}.fa` (the region, upper case) and `{split}_labels.npy`
    (uint8 per base: 0 intergenic, 1 intron, 2 exon; `numpy.load(allow_pickle=False)`).
    `GenomeWindows` cuts windows of any length from them, so one build serves every context
    length of an experiment.
(b) Promoter detection. Positives: the 2 kb upstream of the chr2R TSSs (deduplicated: several
    transcripts share a TSS). Negatives: for each positive, a 2 kb window of the same region
    that overlaps no TSS +- 2 kb, with the same G+C fraction (+-0.01) and no more Ns, half
    of them reverse-complemented (the positives read towards their gene on either strand).
    What is left to tell them apart is the sequence itself (core promoter motifs near the
    TSS), not composition, case or position: `promoters_{split}.jsonl`, one
    `{"text", "label", "start", "strand"}` per line, labels `promoter` / `background`.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from longseq.data.real import SPLITS, SourceNotFoundError
from longseq.data.tokenizers import DNATokenizer
from longseq.labels import IGNORE

CHROM = "chr2R"
# Half-open split regions on chr2R, in bp (the test region runs to the end).
SPLIT_STARTS = {"train": 0, "val": 17_000_000, "test": 19_000_000}
LABELS = ("intergenic", "intron", "exon")
PROMOTER_LABELS = ("background", "promoter")
UNLABELLED = 255  # a base's uint8 label that no class describes: read as IGNORE
UPSTREAM = 2000
PACKAGES = ("augustus-doc", "chromhmm-example", "r-bioc-biostrings")
# Each file's path inside its package.
FILES = {
    "genome": "usr/share/doc/augustus/tutorial/data/chr2R.fa",
    "genes": "usr/share/doc/chromhmm/examples/COORDS/dm3/RefSeqGene.dm3.bed.gz",
    "exons": "usr/share/doc/chromhmm/examples/COORDS/dm3/RefSeqExon.dm3.bed.gz",
    "tss": "usr/share/doc/chromhmm/examples/ANCHORFILES/dm3/RefSeqTSS.dm3.txt.gz",
    "upstream": "usr/lib/R/site-library/Biostrings/extdata/dm3_upstream2000.fa.gz",
}
INSTALL = (
    "the fruit-fly genome and its annotation come from Debian packages; fetch and unpack them:\n"
    "  cd /tmp && apt-get download " + " ".join(PACKAGES) + "\n"
    "  for f in /tmp/augustus-doc_*.deb /tmp/chromhmm-example_*.deb "
    "/tmp/r-bioc-biostrings_*.deb; do dpkg-deb -x $f /tmp/genome; done\n"
    "  longseq data genome --source /tmp/genome --out DIR\n"
    "(or `apt-get install " + " ".join(PACKAGES) + "` and omit --source)"
)
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")


def find_sources(source: str | Path | None = None) -> dict[str, Path]:
    """Each file of `FILES` under `source` (unpacked packages), or under / (installed)."""
    root = Path(source) if source is not None else Path("/")
    found = {name: root / rel for name, rel in FILES.items()}
    missing = [str(p) for p in found.values() if not p.is_file()]
    if missing:
        raise SourceNotFoundError(f"not found: {', '.join(missing)}\n{INSTALL}")
    return found


def _open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def read_fasta(path: Path) -> Iterator[tuple[str, str, str]]:
    """(id, description, upper-case sequence) of each FASTA record (Biopython's reader)."""
    from Bio import SeqIO  # Biopython: imported here, so `longseq` starts without it

    with _open_text(path) as f:
        for rec in SeqIO.parse(f, "fasta"):
            yield rec.id, rec.description, str(rec.seq).upper()


def read_bed(path: Path, chrom: str) -> list[tuple[int, int]]:
    """The (start, end) intervals of `chrom` in a BED file (0-based, end excluded)."""
    out = []
    with _open_text(path) as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if not line.strip() or cols[0] in ("track", "browser") or cols[0].startswith("#"):
                continue
            if len(cols) < 3:
                raise ValueError(f"{path}:{n}: a BED line needs chrom, start and end")
            if cols[0] == chrom:
                start, end = int(cols[1]), int(cols[2])
                if not 0 <= start < end:
                    raise ValueError(f"{path}:{n}: start {start} must lie in [0, end={end})")
                out.append((start, end))
    return out


def read_tss(path: Path, chrom: str) -> list[tuple[int, str]]:
    """(position, strand) of each TSS of `chrom` (ChromHMM anchor file: chrom, pos, strand)."""
    out = []
    with _open_text(path) as f:
        for line in f:
            cols = line.split()
            if len(cols) >= 3 and cols[0] == chrom:
                out.append((int(cols[1]), cols[2]))
    return out


def base_labels(length: int, genes: Sequence[tuple[int, int]], exons: Sequence[tuple[int, int]]):
    """uint8 per base: 0 intergenic, 1 intron (in a gene, not in an exon), 2 exon."""
    labels = np.zeros(length, dtype=np.uint8)
    for start, end in genes:
        labels[start:end] = np.maximum(labels[start:end], 1)
    for start, end in exons:
        labels[start:end] = 2
    return labels


def split_regions(
    length: int, split_starts: dict[str, int] = SPLIT_STARTS
) -> dict[str, tuple[int, int]]:
    """Each split's half-open region of the chromosome."""
    starts = [split_starts[s] for s in SPLITS] + [length]
    if any(a >= b for a, b in itertools.pairwise(starts)):
        raise ValueError(f"split starts {split_starts} must increase within {length:,} bp")
    return {s: (starts[i], starts[i + 1]) for i, s in enumerate(SPLITS)}


def train_dna_bpe(sequence: str, vocab_size: int, path: Path, sample_bp: int = 4_000_000) -> None:
    """A BPE vocabulary of DNA (Hugging Face `tokenizers`), as BigBird learned one with
    SentencePiece: trained on every k-th 1 kb piece of `sequence` (about `sample_bp` in all),
    no pre-tokenizer (DNA has no words), tokens joined back without spaces; the specials are
    BERT's, so `HFTokenizer` finds them."""
    from tokenizers import Tokenizer, decoders, models, trainers

    pieces = [sequence[i : i + 1000] for i in range(0, len(sequence), 1000)]
    pieces = pieces[:: max(1, len(sequence) // sample_bp)]
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]"],
        initial_alphabet=list(DNATokenizer.alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    tok.save(str(path))


def reverse_complement(seq: str) -> str:
    return seq.translate(_COMPLEMENT)[::-1]


def gc_fraction(seq: str) -> float:
    acgt = sum(seq.count(b) for b in "ACGT")
    return (seq.count("G") + seq.count("C")) / acgt if acgt else 0.0


@dataclass(frozen=True)
class Promoter:
    start: int  # on the chromosome (0-based) of the upstream region
    strand: str  # "+" or "-"
    text: str  # read towards the gene


def promoters(upstream: Path, genome: str) -> list[Promoter]:
    """The chr2R records of the upstream-2 kb file, each checked against the genome and
    deduplicated by position. Headers read `NM_x_up_2000_chr2R_START_f chr2R:START-END`
    (1-based, inclusive; `_r`: the reverse strand, stored reverse-complemented)."""
    seen: dict[tuple[int, str], Promoter] = {}
    for rid, _desc, seq in read_fasta(upstream):
        parts = rid.split("_")
        if len(parts) < 3 or parts[-3] != CHROM:
            continue
        start, strand = int(parts[-2]) - 1, "+" if parts[-1] == "f" else "-"
        forward = seq if strand == "+" else reverse_complement(seq)
        if genome[start : start + len(seq)] != forward:
            raise ValueError(f"{upstream}: {rid} does not match {CHROM} at {start + 1}")
        seen.setdefault((start, strand), Promoter(start, strand, seq))
    return sorted(seen.values(), key=lambda p: (p.start, p.strand))


def background(
    genome: str,
    region: tuple[int, int],
    avoid: np.ndarray,
    like: Promoter,
    rng: random.Random,
    tries: int = 400,
) -> Promoter | None:
    """A window of `region` outside `avoid` (bool per base) with `like`'s G+C fraction
    (+-0.01) and no more Ns, on a random strand; None when `tries` draws find none."""
    n = len(like.text)
    want, max_n = gc_fraction(like.text), like.text.count("N")
    lo, hi = region
    for _ in range(tries):
        start = rng.randrange(lo, hi - n)
        if avoid[start : start + n].any():
            continue
        seq = genome[start : start + n]
        if seq.count("N") <= max_n and abs(gc_fraction(seq) - want) <= 0.01:
            strand = rng.choice("+-")
            return Promoter(start, strand, seq if strand == "+" else reverse_complement(seq))
    return None


def build(
    out: str | Path,
    source: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
    *,
    bpe_vocab: int | None = 4096,
    split_starts: dict[str, int] = SPLIT_STARTS,
) -> dict[str, Any]:
    """Write both tasks' files to `out` (see the module docstring), and with `bpe_vocab` a
    DNA BPE `tokenizer.json` learned on the training region; returns the stats."""
    files = find_sources(source)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    say(f"reading {files['genome']}")
    records = [r for r in read_fasta(files["genome"]) if r[0] == CHROM]
    if not records:
        raise ValueError(f"{files['genome']} holds no {CHROM} record")
    genome = records[0][2]
    labels = base_labels(
        len(genome), read_bed(files["genes"], CHROM), read_bed(files["exons"], CHROM)
    )
    regions = split_regions(len(genome), split_starts)
    stats: dict[str, Any] = {"dataset": "genome", "chrom": CHROM, "bp": len(genome), "splits": {}}
    for split, (lo, hi) in regions.items():
        (out / f"{split}.fa").write_text(f">{CHROM}:{lo}-{hi}\n{genome[lo:hi]}\n")
        np.save(out / f"{split}_labels.npy", labels[lo:hi], allow_pickle=False)
        counts = np.bincount(labels[lo:hi], minlength=len(LABELS))
        stats["splits"][split] = {
            "region": [lo, hi],
            "bases": dict(zip(LABELS, map(int, counts), strict=True)),
        }
    say(f"reading {files['upstream']}")
    proms = promoters(files["upstream"], genome)
    avoid = np.zeros(len(genome), dtype=bool)
    for pos, _strand in read_tss(files["tss"], CHROM):
        avoid[max(0, pos - UPSTREAM) : pos + UPSTREAM] = True
    for p in proms:
        avoid[p.start : p.start + len(p.text)] = True
    rng = random.Random(seed)
    for split, region in regions.items():
        inside = [p for p in proms if region[0] <= p.start and p.start + UPSTREAM <= region[1]]
        rows, unmatched = [], 0
        for p in inside:
            neg = background(genome, region, avoid, p, rng)
            if neg is None:  # no window of that composition: drop the positive too (balance)
                unmatched += 1
                continue
            rows += [(p, "promoter"), (neg, "background")]
        rng.shuffle(rows)
        with (out / f"promoters_{split}.jsonl").open("w") as f:
            for p, label in rows:
                rec = {"text": p.text, "label": label, "start": p.start, "strand": p.strand}
                f.write(json.dumps(rec) + "\n")
        stats["splits"][split]["promoters"] = {"pairs": len(rows) // 2, "unmatched": unmatched}
    if bpe_vocab:
        say(f"learning a {bpe_vocab}-token DNA BPE on the training region")
        train_dna_bpe(genome[slice(*regions["train"])], bpe_vocab, out / "tokenizer.json")
    (out / "labels.json").write_text(json.dumps(list(PROMOTER_LABELS)) + "\n")
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    (out / "README.md").write_text(_readme(stats, source))
    return stats


def _readme(stats: dict[str, Any], source: str | Path | None) -> str:
    lines = [
        "# genome",
        "",
        f"Built by `longseq data genome` from {source or 'the installed packages'}: "
        f"{stats['chrom']} of the fruit fly (dm3), {stats['bp']:,} bp. Format and method: "
        "`longseq/data/genome.py`.",
        "",
        "| split | region (bp) | intergenic | intron | exon | promoter pairs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for split, s in stats["splits"].items():
        b = s["bases"]
        lines.append(
            f"| {split} | {s['region'][0]:,}-{s['region'][1]:,} | {b['intergenic']:,} | "
            f"{b['intron']:,} | {b['exon']:,} | {s['promoters']['pairs']} |"
        )
    return "\n".join(lines) + "\n"


class GenomeWindows:
    """Windows of `length` bases of one split (`{split}.fa`, labels in `{split}_labels.npy`
    beside it, the records' bases in order) for per-base labelling: item i is
    `{"input_ids", "labels"}` (long tensors, one id and one label per base). Windows start
    every `stride` bases from each record's start and never cross a record's end (a record
    shorter than `length` gives none); those with more than a fraction `max_n` of Ns are
    skipped. A label of UNLABELLED (255: genome-cds's bases coding on both strands) is read
    as IGNORE."""

    def __init__(
        self, fasta: str | Path, length: int, stride: int | None = None, max_n: float = 0.1
    ) -> None:
        import torch  # the builder itself needs no torch

        fa = Path(fasta)
        npy = fa.with_name(f"{fa.stem}_labels.npy")
        for path in (fa, npy):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: build it with `longseq data genome`")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        records = [s for _id, _d, s in read_fasta(fa)]
        seq = "".join(records)
        labels = np.load(npy, allow_pickle=False)
        if len(labels) != len(seq):
            raise ValueError(f"{npy} has {len(labels)} labels for {len(seq)} bases in {fa}")
        tok = DNATokenizer()
        self.ids = torch.tensor(tok.encode(seq), dtype=torch.long)
        self.labels = torch.from_numpy(labels.astype(np.int64)).masked_fill(
            torch.from_numpy(labels == UNLABELLED), IGNORE
        )
        stride = stride or length
        is_n = (self.ids == tok.ids["N"]).float()
        starts, offset = [], 0
        for record in records:
            starts += range(offset, offset + len(record) - length + 1, stride)
            offset += len(record)
        self.starts = [s for s in starts if float(is_n[s : s + length].mean()) <= max_n]
        self.length = length
        self.lengths = [length] * len(self.starts)  # for length-bucketed batches

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.starts[i]
        sl = slice(s, s + self.length)
        return {"input_ids": self.ids[sl], "labels": self.labels[sl]}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument(
        "--source", help="root of the unpacked packages (default: the installed ones, under /)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the background windows")
    p.add_argument(
        "--bpe-vocab",
        type=int,
        default=4096,
        help="size of the DNA BPE vocabulary learned on the training region (0: none)",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    try:
        stats = build(args.out, args.source, args.seed, args.progress, bpe_vocab=args.bpe_vocab)
    except SourceNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for split, s in stats["splits"].items():
        print(
            f"{split}: {s['region'][1] - s['region'][0]:,} bp, "
            f"{s['promoters']['pairs']} promoter pairs"
        )
    print(f"wrote {args.out} (see README.md, stats.json)")
    return 0


__all__ = [
    "LABELS",
    "PROMOTER_LABELS",
    "GenomeWindows",
    "base_labels",
    "build",
    "find_sources",
    "promoters",
    "read_bed",
]
