"""Bad input, each row: what a user gives, the call, and the clear error it must produce
(issue 12's sweep: before, each of these was a raw traceback, a crash or silently accepted)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from longseq import attention
from longseq.models import ModelConfig


def _layer_batch0(tmp: Path) -> None:
    attention.build("full", 16, 2)(torch.zeros(0, 8, 16))


def _config_str(tmp: Path) -> None:
    ModelConfig(hidden_size="32", num_heads=2)  # type: ignore[arg-type]


def _config_float(tmp: Path) -> None:
    ModelConfig(vocab_size=1e3)  # type: ignore[arg-type]


def _config_huge(tmp: Path) -> None:
    ModelConfig(vocab_size=10**12)


def _config_norm_type(tmp: Path) -> None:
    ModelConfig(norm_type="batch")


def _config_kv_heads(tmp: Path) -> None:
    ModelConfig(num_heads=4, num_key_value_heads=3)


def _jsonl_not_utf8(tmp: Path) -> None:
    from longseq.data.datasets import TextClassificationDataset
    from longseq.data.tokenizers import ByteTokenizer

    path = tmp / "train.jsonl"
    path.write_bytes(b'{"text": "ok", "label": "a"}\n{"text": "\xff\xfe", "label": "b"}\n')
    TextClassificationDataset(path, ByteTokenizer(), 64)


def _yaml_duplicate(tmp: Path) -> None:
    from longseq.train import load_config

    path = tmp / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  lr: 1\n")
    load_config(path)


def _yaml_tab(tmp: Path) -> None:
    from longseq.train import load_config

    path = tmp / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n\tmax_steps: 2\n")
    load_config(path)


def _set_breaks_the_file(tmp: Path) -> None:
    from longseq.train import load_config

    path = tmp / "c.yaml"
    path.write_text("optim:\n  warmup_steps: 20\n  lr: 1e-3\n")
    load_config(path, ["optim.lr=1e-2", "optim.max_steps=2"])


def _lr_inf(tmp: Path) -> None:
    from longseq.train import TrainConfig

    TrainConfig.from_dict({"optim": {"lr": float("inf")}})


def _preset_set(item: str) -> Callable[[Path], None]:
    def call(tmp: Path) -> None:
        from longseq.compare import presets

        presets.get("recall").with_overrides([item])

    return call


def _truncated_model(tmp: Path, architecture: str = "encoder") -> Path:
    from longseq.models import build_model

    cfg = ModelConfig(
        architecture=architecture,
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        intermediate_size=32,
        max_length=32,
    )
    build_model(cfg, seed=0).save_pretrained(tmp / "model")
    weights = tmp / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return tmp / "model"


def _from_pretrained_cut(tmp: Path) -> None:
    from longseq.models import from_pretrained

    from_pretrained(_truncated_model(tmp))


def _init_from_cut(tmp: Path) -> None:
    from longseq.train import train

    data = tmp / "train.jsonl"
    data.write_text('{"text": "abcabc", "label": "a"}\n{"text": "bcabca", "label": "b"}\n')
    train(
        {
            "model": {"init_from": str(_truncated_model(tmp, "masked-lm"))},
            "data": {
                "task": "classification",
                "train": str(data),
                "batch_size": 2,
                "max_length": 32,
            },
            "optim": {"max_steps": 1},
            "run": {"out": str(tmp / "run"), "progress": False, "tensorboard": False},
        }
    )


def _train_too_big(tmp: Path) -> None:
    """A training step that cannot fit (memory pinned at 1 MiB, whatever the machine; small
    enough to run should the check be gone)."""
    from unittest import mock

    from longseq.train import train

    data = tmp / "train.jsonl"
    data.write_text('{"text": "%s", "label": "a"}\n{"text": "b", "label": "b"}\n' % ("a" * 8000))
    config = {
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64},
        "data": {"task": "classification", "train": str(data), "batch_size": 2,
                 "max_length": 100_000},
        "optim": {"max_steps": 1},
        "run": {"out": str(tmp / "run"), "progress": False, "tensorboard": False},
    }  # fmt: skip
    with mock.patch("longseq.train.memory.available_bytes", return_value=2.0**20):
        train(config)


def _predict_too_long(tmp: Path) -> None:
    from longseq.data.tokenizers import ByteTokenizer
    from longseq.models import build_model
    from longseq.models.predict import Predictor

    cfg = ModelConfig(architecture="sequence-classification", hidden_size=16, num_layers=1,
                      num_heads=2, intermediate_size=32, max_length=32)  # fmt: skip
    Predictor(build_model(cfg, seed=0), ByteTokenizer(), max_length=5000)


def _hf_folder(tmp: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp / "hf")
    return tmp / "hf"


def _convert(src: Path) -> None:
    from longseq.convert import from_huggingface

    from_huggingface(src)


def _convert_pipeline(tmp: Path) -> None:
    import json

    src = _hf_folder(tmp)
    raw = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**raw, "architectures": ["pipeline"]}))
    _convert(src)


def _convert_cut(tmp: Path) -> None:
    src = _hf_folder(tmp)
    weights = src / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _convert(src)


def _convert_llama_rope_scaling(tmp: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    config.rope_parameters = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    from longseq.convert import from_huggingface

    from_huggingface(transformers.LlamaForCausalLM(config))


def _convert_not_gguf(tmp: Path) -> None:
    for package in ("transformers", "gguf", "accelerate"):
        pytest.importorskip(package)
    (tmp / "model.gguf").write_bytes(b"GGUF, cut short")
    _convert(tmp / "model.gguf")


def _register_not_a_task(tmp: Path) -> None:
    from longseq import tasks

    tasks.register(dict)  # type: ignore[arg-type]


def _unknown_task(tmp: Path) -> None:
    from longseq import tasks

    tasks.get("sumarisation")


def _compare_task_twice(tmp: Path) -> None:
    from longseq import tasks

    class Twice(tasks.Task):
        name, architecture = "test-twice", "sequence-classification"
        compare = (tasks.CompareTask("listops", "test-twice", None, "accuracy", "again"),)

    tasks.register(Twice)
    try:
        tasks.compare_tasks()
    finally:
        tasks.unregister(Twice.name)


def _two_files_for_one(tmp: Path) -> None:
    from longseq import tasks

    tasks.get("classification").files(["a.jsonl", "b.jsonl"], "test")


def _evaluate_a_headless_model(tmp: Path) -> None:
    from types import SimpleNamespace

    from longseq.train.commands import _data_config

    model = SimpleNamespace(config=SimpleNamespace(architecture="encoder", max_length=64))
    _data_config(SimpleNamespace(model=str(tmp), task=None, max_length=None), model)


ROWS: list[tuple[str, Callable[[Path], None], str]] = [
    ("tasks.register of a non-Task", _register_not_a_task, "register takes a Task subclass"),
    ("an unknown task name", _unknown_task, "unknown task 'sumarisation'; valid tasks: "),
    ("two tasks declare one compare task", _compare_task_twice, "'listops' is declared twice"),
    ("two files for a one-file split", _two_files_for_one, "data.test must name one file"),
    ("evaluate a model no task trains", _evaluate_a_headless_model, "pass --task"),
    ("convert: a cut .gguf file", _convert_not_gguf, "is not a readable GGUF model file"),
    (
        "convert: a Llama with rope scaling",
        _convert_llama_rope_scaling,
        "rope_type='yarn' (rope scaling) is not supported",
    ),
    ("convert: architectures ['pipeline']", _convert_pipeline, "not a transformers model class"),
    ("convert: a cut model.safetensors", _convert_cut, "not a readable safetensors file"),
    ("a cut model.safetensors", _from_pretrained_cut, "not a readable safetensors file"),
    ("init_from a cut model", _init_from_cut, "init_from: "),
    (
        "a training step too big for memory, before allocating",
        _train_too_big,
        "more than the 1 MiB of memory available to it (an estimate, made before allocating",
    ),
    (
        "predict --max-length 5000 on a 32-token model",
        _predict_too_long,
        "max_length=5000 exceeds this model's max_length=32",
    ),
    ("a layer call with batch size 0", _layer_batch0, "empty batch"),
    ('hidden_size: "32" in a config', _config_str, "hidden_size must be an integer"),
    ("vocab_size: 1e3 (a float)", _config_float, "vocab_size must be an integer"),
    ("vocab_size: 1e12, before allocating", _config_huge, "vocab_size x hidden_size"),
    ("norm_type: batch", _config_norm_type, "unknown norm_type 'batch'; valid: layer, rms"),
    ("num_key_value_heads: 3 of 4 heads", _config_kv_heads, "positive divisor of num_heads=4"),
    ("a JSONL file that is not UTF-8", _jsonl_not_utf8, "train.jsonl: not UTF-8"),
    ("a YAML config with a key twice", _yaml_duplicate, "duplicate key 'lr'"),
    ("optim.lr: inf", _lr_inf, "optim.lr must be finite"),
    (
        "--set optim.max_steps=2 below warmup_steps",
        _set_breaks_the_file,
        "--set optim.max_steps=2: optim.warmup_steps=20 must lie in 0..max_steps=2",
    ),
    ("a tab in a YAML config: its file and line", _yaml_tab, 'c.yaml", line 3, column 1'),
    (
        "compare --set window=64 (a mechanism's option as a preset field)",
        _preset_set("window=64"),
        "or options.MECHANISM.OPTION=VALUE",
    ),
    (
        "compare --set options.nope.window=64",
        _preset_set("options.nope.window=64"),
        "unknown attention mechanism 'nope'; valid names: full",
    ),
    (
        "compare --set options.lsh.window=64",
        _preset_set("options.lsh.window=64"),
        "unknown option(s) ['window'] for 'lsh' attention; valid options: ",
    ),
    (
        "compare --set options.lsh=4",
        _preset_set("options.lsh=4"),
        "options['lsh'] must map option names to values",
    ),
]


@pytest.mark.parametrize(("what", "call", "message"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gets_a_clear_error(tmp_path: Path, what, call, message) -> None:
    with pytest.raises(ValueError) as err:
        call(tmp_path)
    assert message in str(err.value), (what, str(err.value))
