"""The trainer end to end on tiny models: outputs, exact resume, metrics against direct
computation, every task, precision, early stopping, init_from, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from longseq import cli
from longseq.data.datasets import LMDataset, TextClassificationDataset
from longseq.models import from_pretrained
from longseq.models import metrics as M
from longseq.train import TrainConfig, build_training_model, train
from longseq.train.checkpoint import STATE_JSON, STATE_TENSORS, read_checkpoint
from longseq.train.data import build_task_data, resolve_tokenizer

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64}
WORDS = {"red": "apple cherry blood rose ", "blue": "sky sea ice cold ", "green": "leaf frog "}


def _write_classification(path, n, seed):
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            label = rng.choice(sorted(WORDS))
            text = (WORDS[label] * rng.randint(1, 5))[: rng.randint(10, 60)]
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


@pytest.fixture(scope="module")
def cls_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cls")
    return {
        "train": str(_write_classification(d / "train.jsonl", 48, 0)),
        "val": str(_write_classification(d / "val.jsonl", 13, 1)),
        "test": str(_write_classification(d / "test.jsonl", 11, 2)),
    }


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm")
    rng = random.Random(0)
    words = ["thee", "thou", "naïve", "café", "lord", "king", "—", "sword", "love"]
    paths = {}
    for split, n in (("train", 600), ("val", 150)):
        text = " ".join(rng.choice(words) for _ in range(n)) + "\n"
        (d / f"{split}.txt").write_text(text, encoding="utf-8")
        paths[split] = str(d / f"{split}.txt")
    return paths


def _config(out, data, *, model=None, data_opts=None, optim=None, run=None) -> TrainConfig:
    return TrainConfig(
        model={**TINY, **(model or {})},
        data={"max_length": 64, "batch_size": 4, **data, **(data_opts or {})},
        optim={"lr": 3e-3, "max_steps": 4, "warmup_steps": 1, **(optim or {})},
        run={
            "out": str(out),
            "eval_every": 2,
            "log_every": 1,
            "tensorboard": False,
            "progress": False,
            "threads": 1,  # tiny models: a second thread only adds contention
            **(run or {}),
        },
    )


def _records(out, kind):
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_classification_outputs_and_metrics(tmp_path, cls_data):
    out = tmp_path / "run"
    cfg = _config(
        out,
        {"task": "classification", **cls_data},
        model={"attention": "longformer", "attention_options": {"window": 8}},
        run={"tensorboard": True},
    )
    result = train(cfg)
    assert result.step == 4 and len(result.evals) == 2
    train_lines = _records(out, "train")
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4]
    for r in train_lines:
        assert {"loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} <= set(r)
        assert r["tokens_per_s"] > 0 and math.isfinite(r["loss"])
    assert [r["split"] for r in _records(out, "eval")] == ["val", "val", "test"]
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tensorboard").iterdir())
    assert (out / "config.yaml").is_file()
    # the checkpoint holds data only: safetensors + JSON, no pickle
    assert sorted(p.name for p in (out / "last").iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer_config.json", STATE_JSON, STATE_TENSORS]
    )
    _, meta = read_checkpoint(out / "last")
    assert meta["step"] == 4 and meta["frozen"]  # Longformer's key_global.bias
    assert (result.best_dir, result.last_dir) == (out / "best", out / "last")
    best = from_pretrained(result.best_dir)
    assert best.config.label_names == ["blue", "green", "red"]
    # Independent oracle: each test example alone (no padding, no bucketing) through the
    # best model, against the trainer's batched, bucketed test metrics.
    ds = TextClassificationDataset(
        cls_data["test"], "byte", 64, label_names=["blue", "green", "red"]
    )
    logits = torch.cat([best(ds[i]["input_ids"][None]).logits for i in range(len(ds))])
    labels = torch.tensor(ds.labels)
    c = M.confusion_matrix(logits.argmax(-1), labels, 3)
    assert result.test["accuracy"] == pytest.approx(M.accuracy(c))
    assert result.test["macro_f1"] == pytest.approx(M.macro_f1(c))
    assert result.test["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)
    assert result.test["best_step"] == result.best["step"]


def test_without_a_terminal_a_run_prints_its_progress(tmp_path, cls_data, capsys):
    """No TTY (as here): a train line per tenth of the run and a line per validation on
    stdout (the test split is left to the final summary); the frozen parameters are counted
    on the terminal and named in the log. run.progress=false: none of these lines."""
    cfg = _config(
        tmp_path / "run",
        {"task": "classification", **cls_data},
        model={"attention": "longformer", "attention_options": {"window": 8}, "num_layers": 1},
        optim={"max_steps": 20},
        run={"eval_every": 10, "progress": True},
    )
    train(cfg)
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert [line.split(":")[0] for line in lines if " val" not in line] == [
        f"step {s}/20" for s in (1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20)
    ]
    val = [line for line in lines if " val: " in line]
    assert [v.split()[1] for v in val] == ["10", "20"] and "accuracy" in val[0]
    assert "test" not in printed.out
    assert "1 parameter(s) get no gradient" in printed.err and "key_global" not in printed.err
    assert "key_global.bias" in (tmp_path / "run" / "log.jsonl").read_text()
    train(cfg.replace(["run.progress=false", f"run.out={tmp_path / 'quiet'}"]))
    assert capsys.readouterr().out == ""


def test_best_dir_is_none_without_validation(tmp_path, cls_data):
    """No val split, no best checkpoint: best_dir says so instead of naming a missing folder."""
    result = train(_config(tmp_path / "run", {"task": "classification", "train": cls_data["train"]},
                           optim={"max_steps": 1}))  # fmt: skip
    assert result.best is None and result.best_dir is None
    assert result.last_dir == tmp_path / "run" / "last" and result.last_dir.is_dir()


def test_resume_reaches_the_same_weights(tmp_path, cls_data):
    """6 steps straight == 3 steps (checkpoint), 1 more (lost in a crash), resume to 6:
    dropout on, shuffled and bucketed data, accumulation, evaluations in between."""

    def cfg(out, **run):
        return _config(
            out,
            {"task": "classification", "train": cls_data["train"], "val": cls_data["val"]},
            model={"dropout": 0.2, "attention_dropout": 0.1},
            optim={"max_steps": 6, "grad_accum": 2, "weight_decay": 0.1},
            run={"save_every": 3, **run},
        )

    a = tmp_path / "straight"
    train(cfg(a))

    class Crash(Exception):
        pass

    def crash(event):
        if event["kind"] == "step" and event["step"] == 4:
            raise Crash

    b = tmp_path / "resumed"
    with pytest.raises(Crash):
        train(cfg(b), callbacks=[crash])
    assert read_checkpoint(b / "last")[1]["step"] == 3
    with pytest.raises(ValueError, match="--resume"):
        train(cfg(b))  # a folder with a checkpoint is not overwritten silently
    resumed = train(cfg(b), resume=True)
    assert resumed.step == 6
    wa, wb = load_file(a / "last/model.safetensors"), load_file(b / "last/model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)
    sa, sb = read_checkpoint(a / "last")[0], read_checkpoint(b / "last")[0]
    for k in (k for k in sa if k.startswith("optimizer.")):
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6)
    la, lb = _records(a, "train"), _records(b, "train")
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5, 6]  # the lost step 4 logged once
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-6)


def test_lm_metrics_match_direct_computation(tmp_path, text_data):
    out = tmp_path / "lm"
    cfg = _config(
        out,
        {"task": "lm", **text_data},
        model={"attention": "longformer", "attention_options": {"window": 16}},
        optim={"max_steps": 2},
    )
    result = train(cfg)
    assert result.model_config.architecture == "causal-lm"
    ev = result.best
    model = from_pretrained(out / "best")
    ds = LMDataset(text_data["val"], "byte", 64)
    total, count = 0.0, 0
    for i in range(len(ds)):
        ids = ds[i]["input_ids"][None]
        total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    assert ev["loss"] == pytest.approx(total / count, abs=1e-5)
    assert ev["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    # byte tokenizer: each target is one byte, so bpb = nats per token / ln 2
    assert ev["bpb"] == pytest.approx(total / count / math.log(2), rel=1e-5)


def test_mlm_then_fine_tune_from_it(tmp_path, text_data, cls_data):
    mlm_out = tmp_path / "mlm"
    result = train(
        _config(
            mlm_out, {"task": "mlm", **text_data}, optim={"max_steps": 2}, run={"eval_every": 2}
        )
    )
    assert set(result.best) >= {"loss", "perplexity", "accuracy"}
    assert 0.0 <= result.best["accuracy"] <= 1.0
    cfg = _config(
        tmp_path / "ft",
        {"task": "classification", "train": cls_data["train"]},
        model={"init_from": str(mlm_out / "last"), "dropout": 0.0},
        optim={"max_steps": 1},
    )
    tok = resolve_tokenizer(cfg.data, cfg.model["init_from"])
    model, notes = build_training_model(cfg, build_task_data(cfg.data, seed=0, tokenizer=tok))
    saved = load_file(mlm_out / "last/model.safetensors")
    assert model.config.architecture == "sequence-classification" and model.config.num_labels == 3
    assert model.config.dropout == 0.0 and model.config.hidden_size == 32
    for k, v in model.state_dict().items():
        if k.startswith("body."):
            assert torch.equal(v, saved[k]), k
    assert any("newly initialised: head" in n for n in notes)
    assert train(cfg).step == 1


def test_listops_task(tmp_path):
    from longseq.data.listops import ListOpsDataset, write_splits

    write_splits(tmp_path / "lo", 16, 8, 4, 0, min_length=5, max_length=40)
    files = {s: str(tmp_path / "lo" / f"listops_{s}.tsv") for s in ("train", "val", "test")}
    result = train(_config(tmp_path / "run", {"task": "listops", **files}, optim={"max_steps": 2}))
    assert result.model_config.num_labels == 10 and result.model_config.vocab_size < 30
    assert 0.0 <= result.test["accuracy"] <= 1.0
    # The Python API with dataset objects (as `longseq compare` uses it) trains the same.
    sets = {f"{s}_dataset": ListOpsDataset(files[s], max_length=64) for s in files}
    again = train(_config(tmp_path / "api", {"task": "listops"}, optim={"max_steps": 2}), **sets)
    assert [r["loss"] for r in again.history] == [r["loss"] for r in result.history]


def test_precision_and_early_stopping(tmp_path, cls_data):
    data = {"task": "classification", "train": cls_data["train"], "val": cls_data["val"]}
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(_config(tmp_path / "fp16", data, run={"precision": "fp16", "device": "cpu"}))
    bf16 = train(
        _config(tmp_path / "bf16", data, run={"precision": "bf16"}, optim={"max_steps": 2})
    )
    assert math.isfinite(bf16.train_loss)
    # lr so small that accuracy cannot change: evals 2 and 3 do not improve on eval 1
    stopped = train(
        _config(
            tmp_path / "es",
            data,
            optim={"lr": 1e-12, "max_steps": 50},
            run={"eval_every": 1, "patience": 2},
        )
    )
    assert stopped.stopped_early and stopped.step == 3 and stopped.best["step"] == 1


def test_bad_inputs(tmp_path, cls_data):
    data = {"task": "classification", "train": cls_data["train"]}
    with pytest.raises(ValueError, match="num_labels=5 but the data has 3 labels"):
        train(_config(tmp_path / "a", data, model={"num_labels": 5}))
    with pytest.raises(ValueError, match="exceeds the model's max_length"):
        train(_config(tmp_path / "b", data, model={"max_length": 32}))
    with pytest.raises(ValueError, match="trains a 'sequence-classification' model"):
        train(_config(tmp_path / "c", data, model={"architecture": "causal-lm"}))
    with pytest.raises(ValueError, match="no training data"):
        train(_config(tmp_path / "d", {"task": "classification"}))


def _save_ops(tmp_path, cfg) -> list[str]:
    """The file operations of one checkpoint save that replaces an earlier one, in order."""
    from longseq.train import checkpoint as ckpt

    seen: list[str] = []
    ckpt.fault_hook = seen.append
    try:
        train(cfg(tmp_path / "probe"))
    finally:
        ckpt.fault_hook = None
    second = [i for i, op in enumerate(seen) if op == "before:write model"][1]
    third = [i for i, op in enumerate(seen) if op == "before:write model"][2]
    return seen[second:third]


def test_a_crash_anywhere_in_a_save_loses_nothing(tmp_path, cls_data):
    """Kill the run before and after every file operation of a save that replaces an earlier
    checkpoint (the second time the run reaches that operation: at step 4's save, or step
    6's for the operations only a replacing save does), then resume: the newest complete
    checkpoint is picked up (never a restart from zero), and the run ends with bitwise the
    weights of an uninterrupted one."""
    from longseq.train import checkpoint as ckpt

    def cfg(out):
        return _config(
            out,
            {"task": "classification", "train": cls_data["train"], "val": cls_data["val"]},
            model={"dropout": 0.2},
            optim={"max_steps": 6},
            run={"save_every": 2, "eval_every": 3},
        )

    straight = train(cfg(tmp_path / "straight"))
    want = load_file(tmp_path / "straight/last/model.safetensors")
    ops = _save_ops(tmp_path, cfg)
    assert "before:rename tmp to last" in ops and "after:remove old again" in ops

    class Killed(Exception):
        pass

    for k, where in enumerate(ops):
        out = tmp_path / f"crash{k}"
        calls = {"n": 0}

        def kill(op, where=where, calls=calls):
            if op == where:
                calls["n"] += 1
                if calls["n"] == 2:  # the second save: step 4 replacing step 2
                    raise Killed(op)

        ckpt.fault_hook = kill
        try:
            with pytest.raises(Killed):
                train(cfg(out))
        finally:
            ckpt.fault_hook = None
        steps = {s: ckpt.verify(out / f"last{s}") for s in ckpt.SUFFIXES}
        assert any(v is not None for v in steps.values()), (where, steps)
        resumed = train(cfg(out), resume=True)
        assert resumed.step == straight.step == 6
        got = load_file(out / "last/model.safetensors")
        for name in want:
            assert torch.equal(got[name], want[name]), (where, name)
        first_step = min(r["step"] for r in _records(out, "train") if r["step"] > 2)
        assert first_step == 3  # steps 1-2 were never redone from zero: resumed at 2 or 4
        assert (out / "best").is_dir()


def test_resume_never_starts_afresh_over_an_earlier_run(tmp_path, cls_data):
    """A folder whose checkpoints are all incomplete is refused, not wiped."""
    from longseq.train import checkpoint as ckpt

    def cfg(out):
        return _config(
            out,
            {"task": "classification", "train": cls_data["train"], "val": cls_data["val"]},
            optim={"max_steps": 2},
            run={"save_every": 2, "eval_every": 2},
        )

    out = tmp_path / "run"
    train(cfg(out))
    (out / "last" / STATE_TENSORS).write_bytes(b"cut")  # a torn write
    assert ckpt.verify(out / "last") is None
    with pytest.raises(ValueError, match="no complete checkpoint"):
        train(cfg(out), resume=True)
    assert (out / "best").is_dir() and (out / "last").is_dir()


@pytest.mark.parametrize("lr", [1e30, 1e20])
def test_a_diverging_run_is_stopped_before_any_save(tmp_path, cls_data, lr):
    """A huge learning rate: the loss, the gradients or the weights turn non-finite within a
    few steps. Training stops with an error naming the step, and no saved weight is
    non-finite (before this guard, NaN weights were saved as best and last)."""
    out = tmp_path / "run"
    cfg = _config(
        out,
        {"task": "classification", "train": cls_data["train"], "val": cls_data["val"]},
        optim={"lr": lr, "max_steps": 20, "warmup_steps": 0, "weight_decay": 0.0},
        run={"save_every": 1, "eval_every": 1, "log_every": 20},  # saves before any log
    )
    with pytest.raises(FloatingPointError, match=r"step \d+"):
        train(cfg)
    for folder in ("last", "best"):
        if (out / folder).is_dir():
            for name, w in load_file(out / folder / "model.safetensors").items():
                assert torch.isfinite(w).all(), (folder, name)


@pytest.mark.parametrize("lr", [float("inf"), float("nan"), 1e31])
def test_lr_must_be_finite(lr):
    with pytest.raises(ValueError, match=r"optim\.lr must be"):
        TrainConfig.from_dict({"optim": {"lr": lr}, "data": {"train": "x"}})


def test_resume_refuses_changed_training_settings(tmp_path, cls_data, capsys):
    """lr, batch size or data changed on --resume: refused, naming each difference; cadence
    and length may change, and the change is reported."""
    out = tmp_path / "run"

    def cfg(optim=None, data=None, run=None):
        return _config(
            out,
            {
                "task": "classification",
                "train": cls_data["train"],
                "val": cls_data["val"],
                **(data or {}),
            },
            optim={"max_steps": 2, **(optim or {})},
            run={"save_every": 2, "eval_every": 2, **(run or {})},
        )

    train(cfg())
    for change, words in (
        ({"optim": {"lr": 0.5}}, "optim.lr: 0.003 -> 0.5"),
        ({"data": {"batch_size": 3}}, "data.batch_size: 4 -> 3"),
        ({"data": {"train": cls_data["test"]}}, "data.train:"),
    ):
        with pytest.raises(ValueError, match="other settings") as err:
            train(cfg(**change), resume=True)
        assert words in str(err.value)
    resumed = train(cfg(optim={"max_steps": 4}, run={"eval_every": 4}), resume=True)
    assert resumed.step == 4
    assert "resume: changed optim.max_steps: 2 -> 4" in capsys.readouterr().err


def test_one_run_per_folder(tmp_path, cls_data):
    """While a run holds the folder's lock, a second run there is refused, naming it."""
    from longseq.train.trainer import run_lock

    out = tmp_path / "run"
    cfg = _config(out, {"task": "classification", "train": cls_data["train"]})
    with run_lock(out), pytest.raises(ValueError, match=r"in use by process \d+"):
        train(cfg)
    assert train(cfg).step > 0  # released: the folder is free again


# ------------------------------------------------------------------ longseq evaluate


def test_evaluate_reproduces_the_runs_test_metrics(tmp_path, cls_data, capsys):
    """The test metrics the run computed at its end == `longseq evaluate` of its best model on
    the test file (another batch size: the counts are exact; the loss, summed per batch in
    fp32, agrees to float32 rounding)."""
    out = tmp_path / "run"
    cfg = _config(
        out,
        {"task": "classification", **cls_data},
        model={"attention": "bigbird", "attention_options": {"block_size": 8}},
    )
    result = train(cfg)
    assert result.test is not None
    dst = tmp_path / "m.json"
    argv = ["evaluate", "--model", str(out / "best"), "--data", cls_data["test"]]
    assert cli.main([*argv, "--batch-size", "3", "--out", str(dst)]) == 0
    got = json.loads(dst.read_text())
    assert got["task"] == "classification" and got["examples"] == 11
    assert got["accuracy"] == result.test["accuracy"]
    assert got["macro_f1"] == result.test["macro_f1"]
    assert got["loss"] == pytest.approx(result.test["loss"], rel=1e-6)
    assert cli.main(argv) == 0  # to stdout
    assert json.loads(capsys.readouterr().out)["accuracy"] == got["accuracy"]


def test_evaluate_lm_without_a_run_config(tmp_path, text_data):
    """A model folder alone: the task comes from its architecture (causal-lm -> lm)."""
    out = tmp_path / "run"
    result = train(_config(out, {"task": "lm", **text_data}, optim={"max_steps": 2}))
    model = tmp_path / "copy"
    (out / "best").rename(model)
    dst = tmp_path / "m.json"
    assert cli.main(["evaluate", "--model", str(model), "--data", text_data["val"],
                     "--max-length", "64", "--out", str(dst)]) == 0  # fmt: skip
    got = json.loads(dst.read_text())
    assert got["task"] == "lm"
    assert got["bpb"] == pytest.approx(result.best["bpb"], rel=1e-6)


def test_evaluate_errors(tmp_path, cls_data, capsys):
    out = tmp_path / "run"
    train(_config(out, {"task": "classification", **cls_data}, optim={"max_steps": 1}))
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", str(out / "best"), "--data", cls_data["test"],
                  "--task", "lm"])  # fmt: skip
    assert "needs a causal-lm model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--model", str(tmp_path / "none"), "--data", cls_data["test"]])
    assert "error" in capsys.readouterr().err


def test_each_head_names_its_evaluation_and_an_encoder_has_none():
    """The evaluation pass asks the head (no table keyed by architecture): every
    architecture with a head has sums of its own kind, and a bare encoder is refused."""
    from longseq.models import ModelConfig, build_model
    from longseq.models import evaluation as E
    from longseq.train.evaluation import sums_for

    expected = {
        "sequence-classification": E.ClassificationSums,
        "token-classification": E.TokenLabelSums,
        "masked-lm": E.MaskedLMSums,
        "causal-lm": E.CausalLMSums,
        "question-answering": E.SpanSums,
    }
    for arch, kind in expected.items():
        model = build_model(ModelConfig(architecture=arch, hidden_size=16, num_heads=2))
        assert type(sums_for(model, None, torch.device("cpu"))) is kind
    encoder = build_model(ModelConfig(hidden_size=16, num_heads=2))
    with pytest.raises(ValueError, match="'encoder' model has no evaluation"):
        sums_for(encoder, None, torch.device("cpu"))
