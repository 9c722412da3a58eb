"""GCIDE QA: definitions parsed from dictd entries, documents, answer spans, scores, training."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from longseq.data import gcide_qa
from longseq.data.tokenizers import ByteTokenizer, load_tokenizer

COCKLE = """Cockle \\Coc"kle\\, v. t. [imp. & p. p. {Cockled}; p. pr. & vb. n.
   {Cockling}.] [Of uncertian origin.]
   To cause to contract into wrinkles or ridges, as some kinds
   of cloth after a wetting.
   [1913 Webster]

   {Cockling sea}, waves dashing against each other.
      [1913 Webster]
"""
TENTIF = """Tentif \\Ten"tif\\, a.
   Attentive, careful and watchful in all things. [Obs.] --Chaucer.
   [1913 Webster]
"""


def test_definitions() -> None:
    assert gcide_qa.definition(COCKLE, "Cockle") == (
        "To cause to contract into wrinkles or ridges, as some kinds of cloth after a wetting."
    )
    assert gcide_qa.definition(TENTIF, "Tentif") == "Attentive, careful and watchful in all things."
    assert gcide_qa.definition(COCKLE, "Cockling sea") is None  # a sub-entry's headword
    assert gcide_qa.definition("Wier \\Wier\\, n.\n   Same as {Weir}.\n", "Wier") is None  # short


def _b64(value: int) -> str:
    digits = ""
    while True:
        digits = gcide_qa._B64[value % 64] + digits
        value //= 64
        if not value:
            return digits


def fake_gcide(folder: Path, count: int = 400) -> Path:
    """A dictd pair (gcide.dict + gcide.index) of `count` made-up entries."""
    rng = random.Random(0)
    words = ["amber", "basalt", "cinder", "dune", "ember", "flint", "granite", "heath"]
    data, index = "", []
    for i in range(count):
        head = f"Term{i}"
        body = " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
        entry = f"{head} \\{head}\\, n.\n   A {body} of kind {i}.\n   [1913 Webster]\n\n"
        index.append(f"{head}\t{_b64(len(data.encode()))}\t{_b64(len(entry.encode()))}")
        data += entry
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "gcide.dict").write_text(data)
    (folder / "gcide.index").write_text("\n".join(index) + "\n")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gqa")
    source = fake_gcide(root / "src")
    out = root / "data"
    sizes = {"train": 40, "val": 8, "test": 8}
    gcide_qa.build(out, source, length=600, sizes=sizes, vocab_size=400, progress=False)
    return out


def test_build_writes_answerable_documents(built: Path) -> None:
    heads = {}
    for split in gcide_qa.SPLITS:
        lines = [json.loads(x) for x in (built / f"{split}.jsonl").read_text().splitlines()]
        assert lines
        for ex in lines:
            a = ex["answer_start"]
            assert ex["context"][a : a + len(ex["answer_text"])] == ex["answer_text"]
            assert f"\n{ex['headword']}: " in "\n" + ex["context"]
            assert ex["question"] == f"{ex['headword']}?"
            assert len(ex["context"]) >= 600
        heads[split] = {h for ex in lines for h in _headwords(ex["context"])}
    assert not heads["train"] & heads["test"]  # each headword in one split only
    assert json.loads((built / "stats.json").read_text())["splits"]["test"]["examples"] == 8
    assert load_tokenizer(built / "tokenizer.json").vocab_size <= 400


def _headwords(context: str) -> list[str]:
    return [line.split(":", 1)[0] for line in context.splitlines()]


@pytest.mark.parametrize("kind", ["bpe", "byte"])
def test_dataset_spans_are_the_answer(built: Path, kind: str) -> None:
    tok = load_tokenizer(built / "tokenizer.json") if kind == "bpe" else ByteTokenizer()
    ds = gcide_qa.QADataset(built / "test.jsonl", tok, max_length=1024)
    lines = [json.loads(x) for x in (built / "test.jsonl").read_text().splitlines()]
    assert len(ds) == len(lines) and ds.dropped == 0
    for item, ex in zip(ds.items, lines, strict=True):
        ids = item["input_ids"]
        span = tok.decode(ids[item["start_positions"] : item["end_positions"] + 1])
        assert span.strip() == ex["answer_text"]
        q = len(tok.encode(ex["question"])) + 2
        assert (
            item["global_attention_mask"][:q] == [1] * q and sum(item["global_attention_mask"]) == q
        )
    ends = sorted(item["end_positions"] for item in ds.items)
    cut = ends[len(ends) // 2] + 1  # the answers ending later no longer fit: left out
    short = gcide_qa.QADataset(built / "test.jsonl", tok, max_length=cut)
    assert short.dropped == sum(e >= cut for e in ends) > 0
    assert len(short) + short.dropped == len(lines)
    with pytest.raises(ValueError, match="no example's answer fits"):
        gcide_qa.QADataset(built / "test.jsonl", tok, max_length=ends[0])


def test_best_spans_and_scores() -> None:
    start = torch.tensor([[9.0, 0, 5, 0, 0, 0]])
    end = torch.tensor([[9.0, 0, 0, 4, 0, 0]])
    # position 0 is the question: excluded; (2, 3) is the best span in the context
    assert gcide_qa.best_spans(start, end, torch.tensor([1]), max_answer=4).tolist() == [[2, 3]]
    # (2, 5) would score 5 + 9 but is longer than max_answer = 2 tokens: (4, 5) wins, 0 + 9
    end = torch.tensor([[0.0, 0, 0, 0, 0, 9]])
    assert gcide_qa.best_spans(start, end, torch.tensor([1]), max_answer=2).tolist() == [[4, 5]]
    assert gcide_qa.best_spans(start, end, torch.tensor([1]), max_answer=4).tolist() == [[2, 5]]
    pred = torch.tensor([[2, 5], [2, 3], [7, 8]])
    gold = torch.tensor([[2, 5], [3, 4], [1, 2]])
    exact, f1 = gcide_qa.span_scores(pred, gold)
    assert exact.tolist() == [1.0, 0.0, 0.0]
    assert f1.tolist() == pytest.approx([1.0, 2 * 1 / 4, 0.0])


@pytest.mark.parametrize("attention", ["full", "longformer"])
def test_trainer_trains_and_scores_qa(built: Path, tmp_path: Path, attention: str) -> None:
    from longseq.train import train

    options = {"window": 16} if attention == "longformer" else {}
    result = train(
        {
            "model": {
                "hidden_size": 16,
                "num_layers": 1,
                "num_heads": 2,
                "intermediate_size": 32,
                "attention": attention,
                "attention_options": options,
            },
            "data": {
                "task": "qa",
                "train": str(built / "train.jsonl"),
                "val": str(built / "val.jsonl"),
                "test": str(built / "test.jsonl"),
                "max_length": 512,
                "batch_size": 4,
            },
            "optim": {"max_steps": 2},
            "run": {
                "out": str(tmp_path / "run"),
                "eval_every": 2,
                "metric": "f1",
                "progress": False,
                "tensorboard": False,
                "threads": 1,
            },
        }
    )
    assert set(result.test) >= {"loss", "exact_match", "f1"}
    assert 0.0 <= result.test["f1"] <= 1.0
    # the recorded test F1 is the mean of the per-example scores of the best model
    from longseq.models import from_pretrained

    tok = load_tokenizer(built / "tokenizer.json")
    from longseq.tasks.qa import scores_by_distance

    rows = scores_by_distance(
        from_pretrained(tmp_path / "run" / "best"),
        gcide_qa.QADataset(built / "test.jsonl", tok, 512),
    )
    assert result.test["f1"] == pytest.approx(sum(r[2] for r in rows) / len(rows))
    # longseq evaluate --buckets: every example of the file, those beyond reach as misses
    from longseq.cli import main

    cut = sorted(r[3] for r in rows)[len(rows) // 2] + 1
    out = tmp_path / "eval.json"
    args = ["evaluate", "--model", str(tmp_path / "run" / "best"), "--data"]
    args += [str(built / "test.jsonl"), "--max-length", str(cut), "--buckets", f"0,{cut},4096"]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    split = json.loads(out.read_text())["by_position"]
    lines = (built / "test.jsonl").read_text().splitlines()
    assert sum(b["examples"] for b in split) == len(lines) == len(rows)
    far = sum(r[3] >= cut for r in rows)
    assert split[-1] == {"start": cut, "end": 4096, "examples": far, "exact_match": 0.0,
                         "f1": 0.0}  # fmt: skip
    kept = gcide_qa.QADataset(built / "test.jsonl", tok, cut, keep_unreachable=True)
    rows = scores_by_distance(from_pretrained(tmp_path / "run" / "best"), kept)
    near = [r for r in rows if r[3] < cut]
    assert split[0]["f1"] == pytest.approx(100 * sum(r[2] for r in near) / len(near))


def test_best_spans_equal_a_brute_force_search() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n, w = 17, 5
        start, end = torch.randn(3, n, generator=gen), torch.randn(3, n, generator=gen)
        first = torch.randint(0, 6, (3,), generator=gen)
        got = gcide_qa.best_spans(start, end, first, max_answer=w).tolist()
        for b in range(3):
            spans = [(s, e) for s in range(int(first[b]), n) for e in range(s, min(n, s + w))]
            best = max(spans, key=lambda se: float(start[b, se[0]] + end[b, se[1]]))
            assert tuple(got[b]) == best


# ------------------------------------------------------------------ scores by answer position
class _Oracle:
    """A stand-in QA model that points at each example's gold span (in dataset order)."""

    supports_global = False

    def __init__(self, golds: list[tuple[int, int]]) -> None:
        self.golds = iter(golds)

    def pad_multiple(self, length: int | None = None) -> int:
        return 1

    def eval(self) -> _Oracle:
        return self

    def __call__(self, input_ids: torch.Tensor, **_: object) -> object:
        b, n = input_ids.shape
        start, end = torch.zeros(b, n), torch.zeros(b, n)
        for i in range(b):
            s, e = next(self.golds)
            # out of reach: point at the last token, which is never the answer
            start[i, s if s >= 0 else n - 1] = end[i, e if e >= 0 else n - 1] = 9.0
        return type("Out", (), {"start_logits": start, "end_logits": end})()


def test_unreachable_answers_are_kept_for_scoring_and_miss(built: Path) -> None:
    from longseq.tasks.qa import by_position, scores_by_distance

    tok = load_tokenizer(built / "tokenizer.json")
    whole = gcide_qa.QADataset(built / "test.jsonl", tok, max_length=1024)
    ends = sorted(item["end"] for item in whole.items)
    cut = ends[len(ends) // 2] + 1
    kept = gcide_qa.QADataset(built / "test.jsonl", tok, max_length=cut, keep_unreachable=True)
    short = gcide_qa.QADataset(built / "test.jsonl", tok, max_length=cut)
    assert len(kept) == len(whole) and kept.dropped == 0 and short.dropped > 0
    reach = [it for it in kept.items if it["start_positions"] >= 0]
    assert reach == short.items  # the reachable ones are exactly the training items
    for it, full in zip(kept.items, whole.items, strict=True):
        assert it["end"] == full["end"] and len(it["input_ids"]) <= cut
        assert (it["end_positions"] == -1) == (it["end"] >= cut)
    golds = [(it["start_positions"], it["end_positions"]) for it in kept.items]
    rows = scores_by_distance(_Oracle(golds), kept, batch_size=3)
    assert [r[2] for r in rows] == [float(it["end"] < cut) for it in kept.items]
    split = by_position(rows, [0, cut, 10**6])
    assert split == [
        {"start": 0, "end": cut, "examples": len(short), "exact_match": 100.0, "f1": 100.0},
        {"start": cut, "end": 10**6, "examples": short.dropped, "exact_match": 0.0, "f1": 0.0},
    ]


def test_by_position_buckets_by_the_answers_last_token() -> None:
    from longseq.tasks.qa import by_position

    # [distance, exact, f1, end]
    rows = [[0, 1.0, 1.0, 511], [500, 0.0, 0.5, 512], [900, 1.0, 1.0, 2047], [3, 0, 0, 5]]
    got = by_position(rows, [0, 512, 1024, 2048, 4096])
    assert [(r["start"], r["end"], r["examples"]) for r in got] == [
        (0, 512, 2),
        (512, 1024, 1),
        (1024, 2048, 1),
    ]  # the empty bucket 2048-4096 is left out, as the LM's
    assert (got[0]["exact_match"], got[0]["f1"]) == (50.0, 50.0)
    assert (got[1]["exact_match"], got[1]["f1"]) == (0.0, 50.0)
    assert (got[2]["exact_match"], got[2]["f1"]) == (100.0, 100.0)
    assert by_position(rows, [512, 1024])[0]["examples"] == 1  # only [512, 1024)
    for bad in ([], [0], [512, 512], [-1, 5]):
        with pytest.raises(ValueError, match="increasing"):
            by_position(rows, bad)


def test_qa_reads_a_pretrained_models_own_vocabulary(built: Path, tmp_path: Path) -> None:
    """data.tokenizer > the init_from model's tokenizer > the data's tokenizer.json."""
    from longseq import tasks
    from longseq.train.config import DataConfig

    saved = tmp_path / "pretrained"
    ByteTokenizer().save(saved)
    qa = tasks.get("qa")
    cfg = DataConfig(task="qa", train=str(built / "train.jsonl"))
    assert isinstance(qa.tokenizer(cfg, init_from=str(saved)), ByteTokenizer)
    assert not isinstance(qa.tokenizer(cfg), ByteTokenizer)  # the data's BPE
    assert not isinstance(qa.tokenizer(cfg, init_from=str(tmp_path)), ByteTokenizer)
    given = DataConfig(task="qa", train=str(built / "train.jsonl"), tokenizer=str(built))
    assert not isinstance(qa.tokenizer(given, init_from=str(saved)), ByteTokenizer)
