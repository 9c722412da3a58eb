"""Metrics against hand-computed values; optimiser groups and schedule against the formulas."""

from __future__ import annotations

import math

import pytest
import torch

from longseq.data.tokenizers import ByteTokenizer, HFTokenizer
from longseq.models import ModelConfig, build_model
from longseq.models import metrics as M
from longseq.train import OptimConfig
from longseq.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def test_macro_f1_hand_example():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 2, 2])
    c = M.confusion_matrix(preds, labels, 3)
    assert c.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    # F1_0 = 2*2/(2*2+0+1) = 0.8; F1_1 = 2/(2+1+1) = 0.5; F1_2 = 2/(2+1+0) = 2/3
    assert M.per_class_f1(c).tolist() == pytest.approx([0.8, 0.5, 2 / 3])
    assert M.macro_f1(c) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert M.accuracy(c) == pytest.approx(4 / 6)
    # a class that never occurs (label or prediction) is left out of the mean...
    assert M.macro_f1(M.confusion_matrix(preds, labels, 5)) == pytest.approx(M.macro_f1(c))
    # ...but one that is only predicted counts with F1 = 0
    c4 = M.confusion_matrix(torch.tensor([3, 0]), torch.tensor([0, 0]), 4)
    assert M.macro_f1(c4) == pytest.approx((2 / 3 + 0.0) / 2)


def test_lm_metrics_and_bytes(tmp_path):
    loss_sum, tokens = 6.0, 4
    m = M.lm_metrics(loss_sum, tokens, num_bytes=8)
    assert m["loss"] == 1.5 and m["perplexity"] == pytest.approx(math.exp(1.5))
    assert m["bpb"] == pytest.approx(1.5 * 4 / 8 / math.log(2))
    # byte tokenizer: one byte per byte id; special ids and ignored targets count nothing
    tok = ByteTokenizer()
    ids = torch.tensor([[*tok.encode("héllo"), tok.sep_id, -100]])
    assert M.target_bytes(ids, tok) == len("héllo".encode())
    # any other tokenizer: the bytes of the decoded text
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[SEP]": 1, "[UNK]": 2, "héllo": 3, "world": 4}
    hf = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    ht = HFTokenizer(tmp_path / "tokenizer.json")
    ids = torch.tensor([[3, 4, -100], [4, -100, -100]])
    assert M.target_bytes(ids, ht) == len(ht.decode([3, 4]).encode()) + len(b"world")


def test_no_decay_on_biases_and_norms():
    cfg = ModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    model = build_model(cfg.replace(architecture="masked-lm"), seed=0)
    decay, no_decay = param_groups(model)
    assert "body.embeddings.word.weight" in decay  # tied decoder weight listed once
    assert "lm_head.decoder.weight" not in decay + no_decay
    assert "lm_head.decoder.bias" in no_decay
    assert all(n.endswith("bias") or "norm" in n for n in no_decay)
    assert all(not n.endswith("bias") and "norm" not in n for n in decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant"])
def test_schedule(schedule):
    cfg = OptimConfig(lr=1.0, warmup_steps=4, max_steps=14, schedule=schedule, min_lr_ratio=0.1)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(cfg.max_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # warm-up
    assert lrs[4] == pytest.approx(1.0)  # decay starts from the peak
    # halfway through the decay (p = 5/10): linear 1 - 0.9 * 0.5, cosine 0.1 + 0.9 * 0.5
    expected = {"linear": 0.55, "cosine": 0.55, "constant": 1.0}[schedule]
    assert lrs[9] == pytest.approx(expected)
    if schedule == "cosine":
        assert lrs[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.2)))
    assert lr_factor(14, warmup_steps=4, max_steps=14, schedule=schedule, min_lr_ratio=0.1) == (
        pytest.approx(1.0 if schedule == "constant" else 0.1)
    )


def test_auroc_from_margin_histogram_matches_scikit_learn_on_the_raw_scores():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (500,), generator=g)
    margin = torch.randn(500, generator=g) * 3 + labels * 1.5  # informative, overlapping
    exact = roc_auc_score(labels.numpy(), margin.numpy())
    # two batches (or processes) add up to the whole
    hist = M.margin_histogram(margin[:200], labels[:200]) + M.margin_histogram(
        margin[200:], labels[200:]
    )
    assert 0.6 < exact < 0.95
    assert M.auroc(hist) == pytest.approx(exact, abs=2e-3)
    # margins further apart than a bin: the histogram's AUROC is the exact one
    spread = torch.arange(500, dtype=torch.float64) * 0.01 - 2.5
    assert M.auroc(M.margin_histogram(spread, labels)) == pytest.approx(
        roc_auc_score(labels.numpy(), spread.numpy()), abs=1e-12
    )
    one_class = M.margin_histogram(margin, torch.zeros(500, dtype=torch.long))
    assert math.isnan(M.auroc(one_class))


def test_classification_metrics_report_each_class_f1():
    c = M.confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    out = M.classification_metrics(c, 1.0)
    assert [out[f"f1_{k}"] for k in range(3)] == pytest.approx(M.per_class_f1(c).tolist())
    assert out["f1_0"] == 1.0 and out["f1_1"] == pytest.approx(2 / 3)


def test_a_binary_classifier_evaluation_reports_auroc_of_its_margins():
    """ClassificationSums over two batches against scikit-learn on each example's margin."""
    from sklearn.metrics import roc_auc_score

    from longseq.models.evaluation import ClassificationSums

    torch.manual_seed(0)
    cfg = ModelConfig(
        architecture="sequence-classification",
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        vocab_size=50,
        num_labels=2,
    )
    model = build_model(cfg).eval()
    with torch.no_grad():  # margins far wider than a histogram bin, as a trained model's
        model.head.out.weight.mul_(300)
    ids = torch.randint(0, 50, (24, 12))
    labels = torch.arange(24) % 2
    sums = ClassificationSums(model, None, torch.device("cpu"))
    with torch.no_grad():
        for part in (slice(0, 10), slice(10, 24)):
            batch = {"input_ids": ids[part], "labels": labels[part]}
            sums.add(batch, batch)
        logits = model(input_ids=ids).logits
    out = sums.result()
    margin = (logits[:, 1] - logits[:, 0]).numpy()
    assert out["auroc"] == pytest.approx(roc_auc_score(labels.numpy(), margin), abs=1e-9)
    assert 0.0 <= out["auroc"] <= 1.0 and {"f1_0", "f1_1"} <= set(out)
