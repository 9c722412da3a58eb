"""`longseq predict` and `Predictor`: each architecture's answer equals what the model's own
forward gives on the same encoding (an argmax, a top-k, a brute-force best span)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from longseq import tasks
from longseq.cli import main
from longseq.data.tokenizers import ByteTokenizer
from longseq.models import ModelConfig, build_model
from longseq.models.predict import Predictor

TOK = ByteTokenizer()


def saved(tmp_path, architecture, **kw):
    cfg = ModelConfig(
        architecture=architecture,
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=64,
        max_length=64,
        init_std=0.3,
        **kw,
    )
    model = build_model(cfg, seed=0).eval()
    model.save_pretrained(tmp_path / architecture, tokenizer=TOK)
    return model, tmp_path / architecture


def run(capsys, argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["predict", *argv, "--no-progress"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_classification_files_and_stdin(tmp_path, capsys, monkeypatch):
    model, folder = saved(
        tmp_path, "sequence-classification", num_labels=3, label_names=["a", "b", "c"]
    )
    docs = ["the first document " * 3, "another, much longer one " * 9, "x"]
    files = []
    for i, d in enumerate(docs):
        files.append(tmp_path / f"d{i}.txt")
        files[-1].write_text(d)
    out = run(capsys, ["--model", str(folder), *map(str, files), "--batch-size", "2"])
    assert [r["source"] for r in out] == list(map(str, files))
    for r, d in zip(out, docs, strict=True):
        ids = [TOK.cls_id, *TOK.encode(d)[:62], TOK.sep_id]
        with torch.no_grad():
            probs = model(torch.tensor([ids])).logits[0].softmax(-1)
        assert r["label"] == "abc"[int(probs.argmax())]
        assert r["probabilities"][r["label"]] == pytest.approx(float(probs.max()), rel=1e-5)
        assert r["truncated"] == (len(TOK.encode(d)) > 62)
    lines = "\n".join(json.dumps({"id": i, "body": d}) for i, d in enumerate(docs))
    again = run(capsys, ["--model", str(folder), "--text-field", "body"], lines, monkeypatch)
    assert [r["label"] for r in again] == [r["label"] for r in out]
    assert [r["id"] for r in again] == [0, 1, 2]


def test_masked_lm_fills_each_mask_with_the_argmax(tmp_path):
    model, _ = saved(tmp_path, "masked-lm")
    pred = Predictor(model, TOK, top_k=3)
    (r,) = pred.predict([{"text": "ab<mask>cd<mask>"}])
    ids = [*TOK.encode("ab"), TOK.mask_id, *TOK.encode("cd"), TOK.mask_id]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    best = logits[[2, 5]].argmax(-1).tolist()
    assert [m[0]["id"] for m in r["masks"]] == best and len(r["masks"][0]) == 3
    assert r["filled"] == "ab" + TOK.decode([best[0]]) + "cd" + TOK.decode([best[1]])
    with pytest.raises(ValueError, match="nothing to fill"):
        list(pred.predict([{"text": "no mask"}]))


def test_question_answering_gives_the_best_span_of_the_context(tmp_path, capsys):
    model, folder = saved(tmp_path, "question-answering")
    q, context = "who?", "It was the gardener, in the garden."
    out = run(capsys, ["--model", str(folder), "--question", q, str(_file(tmp_path, context))])
    head = [TOK.cls_id, *TOK.encode(q), TOK.sep_id]
    ids = head + TOK.encode(context)
    with torch.no_grad():
        o = model(torch.tensor([ids]))
    s0, e0 = o.start_logits[0], o.end_logits[0]
    best = max(
        ((s, e) for s in range(len(head), len(ids)) for e in range(s, len(ids))),
        key=lambda se: float(s0[se[0]] + e0[se[1]]),
    )
    a, b = best[0] - len(head), best[1] - len(head) + 1  # byte tokens: one char each
    assert out[0]["answer"] == context[a:b] and (out[0]["start"], out[0]["end"]) == (a, b)


def _file(tmp_path, text):
    path = tmp_path / "doc.txt"
    path.write_text(text)
    return path


def test_token_classification_from_text_and_from_ids(tmp_path):
    model, _ = saved(tmp_path, "token-classification", num_labels=4)
    pred = Predictor(model, TOK)
    r1, r2 = pred.predict([{"text": "abcd"}, {"input_ids": TOK.encode("abcd")}])
    with torch.no_grad():
        labels = model(torch.tensor([TOK.encode("abcd")])).logits[0].argmax(-1).tolist()
    assert r1["labels"] == r2["labels"] == [str(i) for i in labels]
    assert r1["tokens"] == list("abcd") and r2["tokens"] == TOK.encode("abcd")


def test_errors(tmp_path, capsys):
    _, lm = saved(tmp_path, "causal-lm")
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(lm), str(_file(tmp_path, "x"))])
    assert "longseq generate" in capsys.readouterr().err
    _, cls = saved(tmp_path, "sequence-classification", num_labels=2)
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(cls), str(tmp_path / "missing.txt")])
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n[1, 2]\n')
    with pytest.raises(SystemExit):
        main(["predict", "--model", str(cls), str(bad)])
    assert "bad.jsonl:2: expected a JSON object" in capsys.readouterr().err


def test_token_classification_reads_a_recall_line(tmp_path):
    """A `longseq data recall` line carries its values as pairs: predict turns them into the
    token types the dataset gives the model; a model that reads token types refuses a line
    without them."""
    from longseq.data.recall import RecallSpec, features, generate

    spec = RecallSpec(length=32, pairs=2, keys=4, values=3, distances=((1, 4), (5, 8), (9, 31)))
    line = generate(spec, 1, seed=0)[0]
    model, _ = saved(
        tmp_path,
        "token-classification",
        num_labels=3,
        vocab_size=spec.vocab_size,
        type_vocab_size=1 + spec.values,
        pad_token_id=0,
    )
    read = tasks.get("recall").predict_input  # what predict reads for the recall task
    r = next(Predictor(model, TOK, read=read).predict([line]))
    f = features(line)
    with torch.no_grad():
        logits = model(
            torch.tensor([f["input_ids"]]), token_type_ids=torch.tensor([f["token_type_ids"]])
        ).logits[0]
    assert r["labels"] == [str(i) for i in logits.argmax(-1).tolist()]
    with pytest.raises(ValueError, match="reads token_type_ids"):
        next(Predictor(model, TOK).predict([{"input_ids": line["input_ids"]}]))
