"""TrainConfig: YAML/JSON -> dataclasses, clear errors, type conversion, --set overrides."""

from __future__ import annotations

import json

import pytest

from longseq.models import ModelConfig
from longseq.train import TrainConfig, load_config
from longseq.train.config import apply_override

YAML = """
model:
  attention: longformer
  attention_options: {window: 32}
  hidden_size: 32
data:
  task: lm
  train: a.txt
  max_length: 64
optim:
  lr: 1e-3          # YAML 1.1 reads this as a string
  betas: [0.9, 0.95]
  schedule: cosine
run:
  out: runs/x
  patience: 3
"""


def test_yaml_file_to_dataclasses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(YAML)
    cfg = load_config(path)
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.9, 0.95)
    assert cfg.data.task == "lm" and cfg.data.max_length == 64
    assert cfg.model["attention_options"] == {"window": 32}
    assert cfg.metric == "loss"  # auto for LM
    # to_dict -> JSON -> from_dict round trip
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_json_file_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"data": {"task": "classification", "train": "t.jsonl"}}))
    cfg = load_config(
        path,
        ["optim.lr=2e-4", "model.attention_options.window=64", "run.precision=bf16"],
    )
    assert cfg.optim.lr == 2e-4
    assert cfg.model == {"attention_options": {"window": 64}}
    assert cfg.run.precision == "bf16"
    assert cfg.replace(["optim.grad_accum=4"]).optim.grad_accum == 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"optim": {"warmup": 1}}, "did you mean 'warmup_steps'"),
        ({"trainer": {}}, "top level"),
        ({"model": {"hidden": 32}}, "model section"),
        ({"optim": {"lr": "fast"}}, "optim.lr must be a number"),
        ({"optim": {"max_steps": 2.5}}, "must be an integer"),
        ({"data": {"task": "translation"}}, "classification, lm, mlm, listops"),
        ({"run": {"precision": "fp8"}}, "fp32, bf16, fp16"),
        ({"optim": {"warmup_steps": 50, "max_steps": 10}}, "warmup_steps"),
        ({"run": {"progress": "yes"}}, "true or false"),
        ({"run": {"metric": "bpb"}}, "not reported for task 'classification'"),
    ],
)
def test_bad_configs_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(raw)


def test_bad_override_and_file(tmp_path):
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_override({}, "lr=1e-3")
    with pytest.raises(ValueError, match=r"section\.key=value"):
        apply_override({}, "optim.lr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_an_error_names_its_cause_the_file_or_the_set_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  warmup_steps: 20\n  max_steps: 10\n")
    # the file alone is wrong: the file is named, whatever --set adds
    with pytest.raises(ValueError, match=rf"^{path}: optim.warmup_steps=20 must lie"):
        load_config(path, ["optim.lr=1e-2"])
    # a --set value makes it wrong: that value is named (not the unrelated one), then the file
    path.write_text("optim:\n  warmup_steps: 20\n")
    with pytest.raises(ValueError) as err:
        load_config(path, ["optim.lr=1e-2", "optim.max_steps=2"])
    assert str(err.value) == (
        f"--set optim.max_steps=2: optim.warmup_steps=20 must lie in 0..max_steps=2 "
        f"(the rest from {path})"
    )
    # a key that is only a substring of a word in the message is not named ("lr": "already")
    with pytest.raises(ValueError, match=r"^--set optim.lr=-1: optim.lr must be positive"):
        load_config(path, ["optim.lr=-1", "run.seed=3"])


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("optim:\n  lr: 1e-3\n\tmax_steps: 2\n")
    with pytest.raises(ValueError) as err:
        load_config(path)
    assert f'in "{path}", line 3, column 1' in str(err.value)
    assert "<unicode string>" not in str(err.value) and "not tabs" in str(err.value)


def test_model_config_object_keeps_only_its_changes():
    cfg = TrainConfig(model=ModelConfig(attention="bigbird", hidden_size=64))
    # num_labels, vocab_size, ... stay free for the data to fill
    assert cfg.model == {"attention": "bigbird", "hidden_size": 64}


@pytest.mark.parametrize("name", ["shakespeare-genre.yaml", "shakespeare-lm.yaml", "gcide-qa.yaml"])
def test_example_configs_load(name):
    from pathlib import Path

    from longseq.models import ModelConfig

    cfg = load_config(Path(__file__).parents[2] / "examples" / name)
    ModelConfig.from_dict(cfg.model)  # a valid model config as written
    assert cfg.data.train.startswith("data/" + name.split("-")[0])


@pytest.mark.parametrize("form", ["truncated", "short", "longformer", "bigbird"])
def test_minilm_qa_configs_start_from_pretrained_weights(form):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "examples" / f"gcide-qa-minilm-{form}.yaml")
    # the converted (truncated, short) or longified folder; the model section adds nothing
    short = form in ("truncated", "short")
    assert cfg.model == {"init_from": "runs/minilm" + ("" if short else f"-{form}-2048")}
    assert cfg.data.task == "qa" and cfg.data.tokenizer is None  # the model's own vocabulary
    assert cfg.data.max_length == {"truncated": 512, "short": 384}.get(form, 1024)
    # the short documents' answers all fit: the longest of the build's sample is 365 BPE
    # tokens (stats.json), a little more in WordPiece
    assert (form == "short") == cfg.data.train.startswith("data/gcide-qa-1000/")


def test_minilm_classification_config_reads_the_kernel_docs_truncated():
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "examples" / "kernel-docs-minilm-truncated.yaml")
    assert cfg.model == {"init_from": "runs/minilm"} and cfg.data.task == "classification"
    assert cfg.data.max_length == 512 and cfg.data.tokenizer is None
    assert all(p.startswith("data/kernel-docs/") for p in (cfg.data.train, cfg.data.val))


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", "optim:\n  lr: 1e-3\n  max_steps: 5\n  lr: 1\n"),
        ("c.yaml", "optim: {lr: 1e-3}\noptim: {lr: 1}\n"),
        ("c.json", '{"optim": {"lr": 0.001, "lr": 1}}'),
    ],
)
def test_duplicate_keys_are_refused(tmp_path, name, text):
    """YAML and JSON keep the last of two equal keys silently; a config must not."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match="duplicate key"):
        load_config(path)
