"""The genome tasks (`longseq data genome`): exon / intron / intergenic per base on windows
of the fruit fly's chr2R, and promoter detection against composition-matched background.

`genome-cds` is the same per-base task on a bacterium (`longseq data genome-cds`): non-coding
/ CDS on the + strand / CDS on the - strand.

`genome-bases` trains a token classifier on windows of `data.max_length` bases cut from each
split's region (`data.train: data/genome/train.fa`), so one build serves every context length;
its metric is macro-F1 over the bases. `genome-promoters` is text classification of the 2 kb
windows (`promoters_{split}.jsonl`), one nucleotide per token unless the config names
another tokenizer (the folder's DNA BPE: `data.tokenizer: data/genome/tokenizer.json`)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longseq.data import bacteria, genome
from longseq.data.tokenizers import load_tokenizer
from longseq.tasks.base import CompareTask, Log, Splits, SplitSource, Task, class_info
from longseq.tasks.lm import MaskedExamples
from longseq.tasks.text import Classification


def _prepare(
    ct: CompareTask,
    folder: Path,
    paths: dict[str, Path],
    given: bool,
    log: Log,
    command: str = "genome",
    build: Callable[..., Any] = genome.build,
) -> None:
    """Build the data into `folder` with `build` (`longseq data COMMAND`) unless its files are
    there (or, `given`, say which are missing)."""
    if all(p.is_file() for p in paths.values()):
        return
    if given:
        missing = ", ".join(p.name for p in paths.values() if not p.is_file())
        raise FileNotFoundError(
            f"--data {folder}: {missing} missing (written by `longseq data {command} --out DIR`)"
        )
    log(f"data: building {ct.dataset} into {folder}")
    build(folder, progress=False)


class GenomeBases(Task):
    name = "genome-bases"
    architecture = "token-classification"
    metrics = ("loss", "accuracy", "macro_f1", "f1_0", "f1_1", "f1_2")  # f1_k: LABELS[k]
    best_metric = "macro_f1"
    split_suffix = "fa"
    compare = (
        CompareTask(
            "genome-bases",
            "genome-bases",
            "genome",
            "macro_f1",
            "exon / intron / intergenic per base of the fruit fly's chr2R",
        ),
    )

    data_command = "genome"  # the `longseq data` builder of its files, and its function
    build = staticmethod(genome.build)

    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        """One id per nucleotide: the labels (or masks) are per base."""
        self.own_vocabulary(cfg, allowed=(None, "dna"))
        return load_tokenizer("dna")

    def dataset(self, source: SplitSource) -> genome.GenomeWindows:
        return genome.GenomeWindows(source.files(self), source.cfg.max_length)

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str]:
        return list(genome.LABELS)

    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        paths = {s: folder / f"{s}.fa" for s in ("train", "val", "test")}
        _prepare(ct, folder, paths, given, log, self.data_command, self.build)
        stats = json.loads((folder / "stats.json").read_text())
        info = {"source": str(folder), "bases": {s: v["bases"] for s, v in stats["splits"].items()}}
        return Splits(*(str(paths[s]) for s in paths), preset.text_length, info)

    def describe_data(self, info: dict[str, Any]) -> str:
        test = info["bases"]["test"]
        total = sum(test.values())
        shares = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in test.items())
        return f"; test bases: {shares}"


class GenomeCDS(GenomeBases):
    """Coding sequence per base of Leptospira kirschneri (`longseq data genome-cds`): the
    same windows, tokenizer and metric as genome-bases, on whole contigs per split."""

    name = "genome-cds"
    compare = (
        CompareTask(
            "genome-cds",
            "genome-cds",
            "genome-cds",
            "macro_f1",
            "non-coding / CDS + strand / CDS - strand per base of Leptospira kirschneri",
            preset="genome",
        ),
    )

    data_command = "genome-cds"
    build = staticmethod(bacteria.build)

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str]:
        return list(bacteria.LABELS)


class GenomeMLM(Task):
    """Masked-LM pre-training on a genome split's windows (BigBird pre-trained on DNA before
    fine-tuning it): the per-base task's windows (`data.train: data/genome-cds/train.fa`),
    their labels unused, BERT masking of `data.mlm_probability` of the bases. Fine-tune with
    `model.init_from: RUN/best` (the body is kept, the head starts fresh)."""

    name = "genome-mlm"
    architecture = "masked-lm"
    metrics = ("loss", "perplexity", "accuracy")
    split_suffix = "fa"

    tokenizer = GenomeBases.tokenizer  # one id per nucleotide: bases are what is masked

    def dataset(self, source: SplitSource) -> MaskedExamples:
        windows = genome.GenomeWindows(source.files(self), source.cfg.max_length)
        return MaskedExamples(windows, source.tokenizer, source.cfg.mlm_probability, source.seed)


class GenomePromoters(Classification):
    name = "genome-promoters"
    metrics = ("loss", "accuracy", "auroc", "f1_1")  # f1_1: the promoter class's F1
    best_metric = "auroc"
    compare = (
        CompareTask(
            "genome-promoters",
            "genome-promoters",
            "genome",
            "auroc",
            "promoters (2 kb upstream of a TSS) against GC-matched background, fruit fly chr2R",
        ),
    )

    def tokenizer(self, cfg: Any, init_from: str | None = None) -> Any:
        """data.tokenizer (the folder's DNA BPE, say), else one id per nucleotide."""
        return load_tokenizer(cfg.tokenizer or "dna")

    def label_names(self, cfg: Any, tokenizer: Any) -> list[str]:
        return list(genome.PROMOTER_LABELS)

    def prepare(
        self, ct: CompareTask, preset: Any, seed: int, folder: Path, given: bool, log: Log
    ) -> Splits:
        paths = {s: folder / f"promoters_{s}.jsonl" for s in ("train", "val", "test")}
        _prepare(ct, folder, paths, given, log)
        counts = {}
        for split, path in paths.items():
            with path.open() as f:
                counts[split] = Counter(json.loads(line)["label"] for line in f)
        names = list(genome.PROMOTER_LABELS)
        info = {"source": str(folder), **class_info(counts, len(names), names)}
        return Splits(*(str(paths[s]) for s in paths), genome.UPSTREAM + 2, info)  # + cls, sep


__all__ = ["GenomeBases", "GenomeCDS", "GenomeMLM", "GenomePromoters"]
