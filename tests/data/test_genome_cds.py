"""`longseq data genome-cds`: per-base CDS labels against the annotation read independently,
whole contigs per split, windows that never cross a contig's end.

A synthetic GenBank file laid out as the Debian package lays its one out runs always; the real
package (unpacked under $LONGSEQ_LEPTO_SOURCE, or installed) when present."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import numpy as np
import pytest

from longseq.cli import main
from longseq.data import bacteria
from longseq.data.genome import GenomeWindows
from longseq.data.real import SourceNotFoundError
from longseq.data.tokenizers import DNATokenizer
from longseq.labels import IGNORE

# (start, end, strand) of each contig's CDS parts: the same layout on every contig, one part
# of a joined CDS, and an overlap of both strands at 9,000-9,100
CDS = [(100, 400, 1), (1_000, 2_500, -1), (5_000, 5_600, 1), (8_000, 9_100, 1), (9_000, 10_000, -1)]
JOIN = [(12_000, 12_300), (12_400, 12_900)]  # one CDS in two parts, + strand


def _label_of(pos: int) -> int:
    """An independent reading of the layout above: 0 none, 1 plus, 2 minus, 255 both."""
    plus = any(a <= pos < b and s == 1 for a, b, s in CDS) or any(a <= pos < b for a, b in JOIN)
    minus = any(a <= pos < b and s == -1 for a, b, s in CDS)
    return 255 if plus and minus else 2 if minus else 1 if plus else 0


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """An unpacked package: 12 contigs of 16,384 + 100 i bp and one of 5 kb (too short)."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import CompoundLocation, FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    root = tmp_path_factory.mktemp("lepto")
    rng = random.Random(0)
    records, seqs = [], {}
    for i, n in enumerate([16_384 + 100 * i for i in range(12)] + [5_000]):
        seq = "".join(rng.choice("acgt") for _ in range(n))
        rec = SeqRecord(Seq(seq), id=f"C{i:02d}.1", name=f"C{i:02d}", description="contig")
        rec.annotations["molecule_type"] = "DNA"
        for a, b, s in CDS:
            if b <= n:
                rec.features.append(SeqFeature(FeatureLocation(a, b, strand=s), type="CDS"))
                rec.features.append(SeqFeature(FeatureLocation(a, b, strand=s), type="gene"))
        parts = [FeatureLocation(a, b, strand=1) for a, b in JOIN]
        rec.features.append(SeqFeature(CompoundLocation(parts), type="CDS"))
        rec.features.append(SeqFeature(FeatureLocation(3_000, 3_100, strand=1), type="tRNA"))
        records.append(rec)
        seqs[rec.id] = seq.upper()
    path = root / bacteria.FILE
    path.parent.mkdir(parents=True)
    with gzip.open(path, "wt") as f:
        SeqIO.write(records, f, "genbank")
    return root, seqs


@pytest.fixture(scope="module")
def built(source, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("lepto-out")
    return out, bacteria.build(out, source[0], progress=False)


def test_labels_follow_the_annotation_and_splits_are_whole_contigs(source, built):
    _, seqs = source
    out, stats = built
    seen: list[str] = []
    for split in ("train", "val", "test"):
        ids = stats["splits"][split]["contigs"]
        seen += ids
        labels = np.load(out / f"{split}_labels.npy", allow_pickle=False)
        text = (out / f"{split}.fa").read_text()
        records = [r.split("\n", 1) for r in text.split(">")[1:]]
        assert [h.split()[0] for h, _ in records] == ids
        offset = 0
        for (_h, body), cid in zip(records, ids, strict=True):
            seq = body.replace("\n", "")
            assert seq == seqs[cid]  # upper case, the contig itself
            expected = [_label_of(p) for p in range(len(seq))]
            assert labels[offset : offset + len(seq)].tolist() == expected
            offset += len(seq)
        assert offset == len(labels)
    assert len(seen) == len(set(seen)) == 12  # disjoint, and the 5 kb contig left out
    by_length = sorted(seqs, key=lambda c: -len(seqs[c]))[:12]
    assert stats["splits"]["val"]["contigs"] == [by_length[8]]
    assert stats["splits"]["test"]["contigs"] == [by_length[9]]
    assert stats["splits"]["train"]["both_strands"] == 10 * 100


def test_windows_stay_inside_a_contig_and_ignore_both_strands(built):
    out, _ = built
    w = GenomeWindows(out / "train.fa", 4096)
    assert len(w) == 10 * 4  # train: 10 contigs of 16,384-17,484 bp, 4 windows each
    item = w[2]  # the first contig's third window: 8,192-12,288, across the overlap
    labels = item["labels"].tolist()
    assert labels[9_000 - 8_192] == IGNORE and labels[9_100 - 8_192] == 2
    assert DNATokenizer().decode(item["input_ids"]).islower() is False


def test_genome_cds_through_the_cli_and_the_trainer(source, tmp_path, capsys):
    from longseq.train import train

    out = tmp_path / "data"
    assert main(["data", "genome-cds", "--source", str(source[0]), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "wrote" in capsys.readouterr().out
    fa = {s: str(out / f"{s}.fa") for s in ("train", "val", "test")}
    model = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    stem = {"conv_layers": 1, "conv_kernel": 5, "conv_pool": 8}
    result = train(
        {
            "model": {
                **model,
                **stem,
                "attention": "bigbird",
                "attention_options": {"block_size": 8},
            },
            "data": {"task": "genome-cds", **fa, "max_length": 1024, "batch_size": 4},
            "optim": {"lr": 3e-3, "max_steps": 2},
            "run": {"out": str(tmp_path / "run"), "eval_every": 2, "progress": False},
        }
    )
    assert result.model.config.label_names == list(bacteria.LABELS)
    assert result.metric == "macro_f1" and 0.0 <= result.test["macro_f1"] <= 1.0


def test_missing_package_says_how_to_get_it(tmp_path, capsys):
    with pytest.raises(SourceNotFoundError, match="apt-get download any2fasta-examples"):
        bacteria.find_source(tmp_path)
    assert (
        main(["data", "genome-cds", "--source", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    )
    assert "dpkg-deb -x" in capsys.readouterr().err


REAL = Path(os.environ.get("LONGSEQ_LEPTO_SOURCE", "/"))


@pytest.mark.skipif(not (REAL / bacteria.FILE).is_file(), reason="any2fasta-examples not present")
def test_real_leptospira(tmp_path):
    """The real package: 41 contigs of 16K+ bp, about three quarters coding."""
    stats = bacteria.build(tmp_path, REAL, progress=False)
    assert stats["contigs"] == 75
    kept = sum(len(s["contigs"]) for s in stats["splits"].values())
    bases = {k: sum(s["bases"][k] for s in stats["splits"].values()) for k in bacteria.LABELS}
    assert kept == 41 and 0.7 < (bases["cds+"] + bases["cds-"]) / sum(bases.values()) < 0.85


def test_masked_lm_pre_training_then_fine_tuning(built, tmp_path):
    """genome-mlm masks bases of the same windows (labels unused); its body then starts a
    genome-cds model (`model.init_from`), whose head is new."""
    import torch

    from longseq.train import train

    out, _ = built
    fa = {s: str(out / f"{s}.fa") for s in ("train", "val", "test")}
    model = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
    model |= {"conv_layers": 1, "conv_kernel": 5, "conv_pool": 8, "attention": "full"}
    pre = train(
        {
            "model": model,
            "data": {"task": "genome-mlm", **fa, "max_length": 1024, "batch_size": 4},
            "optim": {"lr": 3e-3, "max_steps": 2},
            "run": {"out": str(tmp_path / "mlm"), "eval_every": 2, "progress": False},
        }
    )
    assert pre.model.config.architecture == "masked-lm" and "perplexity" in pre.test
    masked = pre.model  # a window's labels are the masked bases only
    assert masked.config.vocab_size == 9
    tuned = train(
        {
            "model": {**model, "init_from": str(pre.best_dir)},
            "data": {"task": "genome-cds", **fa, "max_length": 1024, "batch_size": 4},
            "optim": {"lr": 1e-12, "max_steps": 1},
            "run": {"out": str(tmp_path / "cds"), "eval_every": 1, "progress": False},
        }
    )
    assert tuned.model.config.architecture == "token-classification"
    for name, value in masked.body.state_dict().items():  # lr ~0: the body is the loaded one
        torch.testing.assert_close(tuned.model.body.state_dict()[name], value)


def test_compare_prepares_the_task_from_a_built_folder(built, tmp_path):
    """`longseq compare --task genome-cds --data DIR`: the folder's splits at the preset's
    length, its preset `genome`; a folder without them names the builder."""
    from longseq import tasks
    from longseq.compare.presets import PRESETS

    out, _ = built
    task = tasks.get("genome-cds")
    (ct,) = task.compare
    assert ct.preset == "genome"
    splits = task.prepare(ct, PRESETS["genome"], 0, out, True, print)
    assert splits.test == str(out / "test.fa") and splits.max_length == 512
    assert set(splits.info["bases"]["test"]) == set(bacteria.LABELS)
    with pytest.raises(FileNotFoundError, match="longseq data genome-cds"):
        task.prepare(ct, PRESETS["genome"], 0, tmp_path, True, print)
