"""`longseq data genome`: labels against the annotation read independently, disjoint splits,
promoters that match the genome, composition-matched background, the DNA tokenizers.

A small synthetic chromosome laid out as the Debian packages lay theirs out runs always; the
real packages (unpacked under $LONGSEQ_GENOME_SOURCE, or installed) when present."""

from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from longseq.cli import main
from longseq.data import genome
from longseq.data.real import SourceNotFoundError
from longseq.data.tokenizers import DNATokenizer, load_tokenizer

STARTS = {"train": 0, "val": 60_000, "test": 80_000}
LENGTH = 100_000


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def _revcomp(s: str) -> str:
    return s.translate(str.maketrans("ACGT", "TGCA"))[::-1]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, str, list, list, list]:
    """An unpacked-packages tree: a random chr2R (soft-masked stretches, a run of Ns), genes
    and exons, TSSs and their upstream 2 kb in Biostrings' format (a duplicate included)."""
    root = tmp_path_factory.mktemp("genome-src")
    rng = random.Random(0)
    seq = "".join(rng.choice("ACGT") for _ in range(LENGTH))
    seq = seq[:5000] + seq[5000:7000].lower() + seq[7000:9000] + "N" * 500 + seq[9500:]
    fasta = ">chr2R\n" + "\n".join(seq[i : i + 60] for i in range(0, LENGTH, 60)) + "\n"
    _write(root / genome.FILES["genome"], fasta)
    genes = [(10_000, 20_000), (30_000, 45_000), (62_000, 70_000), (85_000, 95_000)]
    exons = [(10_000, 11_000), (15_000, 16_000), (44_000, 46_000), (63_000, 64_000)]
    bed = lambda ivs: "".join(f"chr2R\t{a}\t{b}\n" for a, b in ivs)  # noqa: E731
    _write(root / genome.FILES["genes"], "chr4\t1\t5\n" + bed(genes))
    _write(root / genome.FILES["exons"], bed(exons))
    tss = [(10_000, "+"), (45_000, "-"), (62_000, "+"), (95_000, "-")]
    _write(root / genome.FILES["tss"], "".join(f"chr2R\t{p}\t{s}\n" for p, s in tss))
    records = []
    for pos, strand in [*tss, (10_000, "+")]:  # the last: another transcript, same TSS
        start = pos - 2000 if strand == "+" else pos
        up = seq[start : start + 2000].upper()
        up = up if strand == "+" else _revcomp(up)
        tag = "f" if strand == "+" else "r"
        records.append(
            f">NM_1_up_2000_chr2R_{start + 1}_{tag} chr2R:{start + 1}-{start + 2000}\n{up}\n"
        )
    records.append(">NM_2_up_2000_chr2L_5_f chr2L:5-2004\n" + "A" * 2000 + "\n")
    _write(root / genome.FILES["upstream"], "".join(records))
    return root, seq.upper(), genes, exons, tss


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("genome-out")
    stats = genome.build(out, source[0], progress=False, bpe_vocab=64, split_starts=STARTS)
    return out, stats


def _label_of(pos: int, genes: list, exons: list) -> int:
    """An independent reading of the annotation: exon beats intron beats intergenic."""
    if any(a <= pos < b for a, b in exons):
        return 2
    return 1 if any(a <= pos < b for a, b in genes) else 0


def test_labels_follow_the_annotation(source, built):
    _root, seq, genes, exons, _tss = source
    out, stats = built
    rng = random.Random(1)
    edges = [p + d for a, b in genes + exons for p in (a, b) for d in (-1, 0)]
    for split, (lo, hi) in genome.split_regions(LENGTH, STARTS).items():
        labels = np.load(out / f"{split}_labels.npy", allow_pickle=False)
        text = (out / f"{split}.fa").read_text().split("\n", 1)[1].replace("\n", "")
        assert text == seq[lo:hi] and len(labels) == hi - lo  # upper case, whole region
        for pos in [p for p in edges if lo <= p < hi] + [rng.randrange(lo, hi) for _ in range(300)]:
            assert labels[pos - lo] == _label_of(pos, genes, exons), pos
        counts = np.bincount(labels, minlength=3).tolist()
        assert stats["splits"][split]["bases"] == dict(zip(genome.LABELS, counts, strict=True))


def test_splits_are_disjoint_and_cover_the_chromosome(built):
    _out, stats = built
    regions = [tuple(s["region"]) for s in stats["splits"].values()]
    assert regions == [(0, 60_000), (60_000, 80_000), (80_000, LENGTH)]
    with pytest.raises(ValueError, match="must increase"):
        genome.split_regions(50_000, STARTS)


def test_promoters_match_the_genome_and_background_matches_their_composition(source, built):
    _root, seq, _genes, _exons, tss = source
    out, stats = built
    near_tss = np.zeros(LENGTH, dtype=bool)
    for pos, _ in tss:
        near_tss[max(0, pos - 2000) : pos + 2000] = True
    seen = 0
    for split, (lo, hi) in genome.split_regions(LENGTH, STARTS).items():
        rows = [json.loads(line) for line in (out / f"promoters_{split}.jsonl").open()]
        pos = [r for r in rows if r["label"] == "promoter"]
        neg = [r for r in rows if r["label"] == "background"]
        assert len(pos) == len(neg) == stats["splits"][split]["promoters"]["pairs"]
        for r in rows:
            assert lo <= r["start"] and r["start"] + 2000 <= hi  # inside its own split
            fwd = seq[r["start"] : r["start"] + 2000]
            assert r["text"] == (fwd if r["strand"] == "+" else _revcomp(fwd))
        for r in neg:
            assert not near_tss[r["start"] : r["start"] + 2000].any()
        gc = sorted(genome.gc_fraction(r["text"]) for r in pos)
        gc_neg = sorted(genome.gc_fraction(r["text"]) for r in neg)
        assert all(abs(a - b) <= 0.011 for a, b in zip(gc, gc_neg, strict=True))
        seen += len(pos)
    assert seen == 4  # the duplicate transcript counted once, chr2L's record ignored


def test_a_promoter_that_does_not_match_the_genome_is_refused(source, tmp_path):
    root = source[0]
    bad = tmp_path / "src"
    for name, rel in genome.FILES.items():
        (bad / rel).parent.mkdir(parents=True, exist_ok=True)
        if name != "upstream":
            (bad / rel).symlink_to(root / rel)
    _write(bad / genome.FILES["upstream"], ">NM_1_up_2000_chr2R_101_f x\n" + "ACGT" * 500 + "\n")
    with pytest.raises(ValueError, match="does not match chr2R at 101"):
        genome.build(tmp_path / "out", bad, progress=False, bpe_vocab=0, split_starts=STARTS)


def test_missing_packages_say_how_to_get_them(tmp_path, capsys):
    with pytest.raises(SourceNotFoundError, match="apt-get download augustus-doc"):
        genome.find_sources(tmp_path)
    assert main(["data", "genome", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "dpkg-deb -x" in capsys.readouterr().err


def test_dna_tokenizers_round_trip(built, tmp_path):
    out, _ = built
    tok = DNATokenizer()
    text = "ACGTNacgtn"
    ids = tok.encode(text)
    assert len(ids) == len(text) and tok.decode(ids) == text.upper()
    assert min(ids) >= 4 and tok.vocab_size == 9
    with pytest.raises(ValueError, match="'X' is not a nucleotide"):
        tok.encode("ACGX")
    assert isinstance(load_tokenizer(tok.save(tmp_path / "t")), DNATokenizer)
    assert isinstance(load_tokenizer("dna"), DNATokenizer)
    bpe = load_tokenizer(out / "tokenizer.json")  # the learned DNA BPE
    seq = (out / "val.fa").read_text().split("\n", 1)[1].replace("\n", "")[:3000]
    ids = bpe.encode(seq)
    assert bpe.decode(ids) == seq and len(ids) < len(seq) / 2  # merges: several bp a token
    assert bpe.mask_id is not None and bpe.pad_id != bpe.sep_id


def test_windows_align_ids_and_labels_and_skip_ns(built):
    out, _ = built
    w = genome.GenomeWindows(out / "train.fa", 1000)
    seq = (out / "train.fa").read_text().split("\n", 1)[1].replace("\n", "")
    labels = np.load(out / "train_labels.npy")
    assert 9000 not in w.starts  # 500 Ns of 1000: over max_n
    assert len(w) == 60 - 1
    i = w.starts.index(10_000)  # a window across a gene's first exon and intron
    item, s = w[i], w.starts[i]
    assert DNATokenizer().decode(item["input_ids"]) == seq[s : s + 1000]
    assert item["labels"].tolist() == labels[s : s + 1000].tolist()
    with pytest.raises(FileNotFoundError, match="longseq data genome"):
        genome.GenomeWindows(out / "nope.fa", 10)


REAL = Path(os.environ.get("LONGSEQ_GENOME_SOURCE", "/"))


@pytest.mark.skipif(
    not (REAL / genome.FILES["genome"]).is_file(), reason="Debian genome packages not present"
)
def test_real_chr2r(tmp_path):
    """The real packages: 21.1 Mbp, about a third exon, every chr2R promoter matched."""
    stats = genome.build(tmp_path, REAL, progress=False, bpe_vocab=0)
    assert stats["bp"] == 21_146_708
    bases = {k: sum(s["bases"][k] for s in stats["splits"].values()) for k in genome.LABELS}
    assert 0.25 < bases["exon"] / stats["bp"] < 0.35
    pairs = sum(s["promoters"]["pairs"] for s in stats["splits"].values())
    assert pairs > 3000


MODEL = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}


def test_genome_tasks_train_and_score(built, tmp_path, capsys):
    """Both tasks through the trainer and `longseq evaluate`: per-base macro-F1 over the
    three classes (the evaluation's confusion matrix, checked against a direct count), and
    promoter classification with one id per nucleotide."""
    import torch

    from longseq.models import metrics
    from longseq.train import train

    out, _ = built
    fa = {s: str(out / f"{s}.fa") for s in ("train", "val", "test")}
    stem = {"conv_layers": 1, "conv_kernel": 5, "conv_pool": 4}  # 64 positions of 4 bases
    result = train(
        {
            "model": {
                **MODEL,
                **stem,
                "attention": "longformer",
                "attention_options": {"window": 8},
            },
            "data": {"task": "genome-bases", **fa, "max_length": 256, "batch_size": 8},
            "optim": {"lr": 3e-3, "max_steps": 3},
            "run": {"out": str(tmp_path / "bases"), "eval_every": 3, "progress": False},
        }
    )
    model = result.model.eval()
    assert model.config.label_names == list(genome.LABELS) and model.config.vocab_size == 9
    assert model.config.conv_pool == 4 and model.body.stem is not None
    assert result.metric == "macro_f1"
    test = genome.GenomeWindows(fa["test"], 256)
    with torch.no_grad():
        batch = [test[i] for i in range(len(test))]
        ids = torch.stack([b["input_ids"] for b in batch])
        labels = torch.stack([b["labels"] for b in batch])
        preds = model(ids).logits.argmax(-1)
    confusion = metrics.confusion_matrix(preds, labels, 3)
    assert result.test["macro_f1"] == pytest.approx(metrics.macro_f1(confusion))
    assert main(["evaluate", "--model", str(result.best_dir), "--data", fa["test"],
                 "--no-progress"]) == 0  # fmt: skip
    scored = json.loads(capsys.readouterr().out)
    assert scored["task"] == "genome-bases"
    assert scored["macro_f1"] == pytest.approx(result.test["macro_f1"])

    pro = {s: str(out / f"promoters_{s}.jsonl") for s in ("train", "val", "test")}
    result = train(
        {
            "model": MODEL,
            "data": {"task": "genome-promoters", **pro, "max_length": 2002, "batch_size": 4},
            "optim": {"lr": 3e-3, "max_steps": 2},
            "run": {"out": str(tmp_path / "promoters"), "eval_every": 2, "progress": False},
        }
    )
    assert result.model.config.label_names == list(genome.PROMOTER_LABELS)
    assert "accuracy" in result.test and result.model.config.vocab_size == 9


def test_genome_bases_refuses_another_tokenizer(built, tmp_path):
    from longseq.train import train

    out, _ = built
    fa = {s: str(out / f"{s}.fa") for s in ("train", "val", "test")}
    with pytest.raises(ValueError, match="its own vocabulary"):
        train(
            {
                "model": MODEL,
                "data": {"task": "genome-bases", **fa, "tokenizer": "byte", "max_length": 64},
                "optim": {"max_steps": 1},
                "run": {"out": str(tmp_path / "r"), "progress": False},
            }
        )
