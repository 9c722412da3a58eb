"""Hugging Face checkpoints -> longseq models with the same outputs.

    from longseq.convert import from_huggingface
    model = from_huggingface(hf_model)            # an in-memory transformers model
    model = from_huggingface("path/to/hf-folder") # config.json + weights, local files only
    model = from_huggingface("model.Q4_1.gguf")   # a GGUF file (Llama architecture)
    model.save_pretrained("out")                  # loads with longseq alone

    longseq convert SRC DST                       # the same from the command line

    from longseq.convert import longify
    long = longify(model, max_length=4096, attention="longformer", window=512)

`CONVERTERS` maps HF's `model_type` to the module that converts it; each module has
`convert(hf_model) -> LongseqModel`, which turns the HF config into a `ModelConfig` and maps
every weight by name with shape checks (`longseq.convert.common`). A converted model is called
like the original (input_ids, attention_mask, global_attention_mask for Longformer) and its
outputs equal the original's in eval mode (tests/convert; docs/convert.md has the figures).

`transformers` is needed only here, to read the HF model (the `convert` extra).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from longseq.models import LongseqModel

# HF model_type -> converter module (each has `convert(hf_model) -> LongseqModel`).
CONVERTERS: dict[str, str] = {
    "bert": "longseq.convert.bert",  # BERT and MiniLM checkpoints
    "roberta": "longseq.convert.roberta",
    "xlm-roberta": "longseq.convert.roberta",
    "longformer": "longseq.convert.longformer",
    "big_bird": "longseq.convert.bigbird",
    "reformer": "longseq.convert.reformer",
    "llama": "longseq.convert.llama",  # Llama-architecture decoders (SmolLM2, TinyLlama, ...)
}
SUPPORTED: tuple[str, ...] = tuple(CONVERTERS)


def convert(hf_model: nn.Module) -> LongseqModel:
    """The longseq model equivalent to an in-memory transformers model (eval mode)."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type not in CONVERTERS:
        what = f"model_type {model_type!r}" if model_type else type(hf_model).__name__
        raise ValueError(
            f"cannot convert {what}: supported Hugging Face model types: {', '.join(SUPPORTED)}"
        )
    model = importlib.import_module(CONVERTERS[model_type]).convert(hf_model)
    param = next(hf_model.parameters(), None)
    if param is not None:
        model = model.to(device=param.device, dtype=param.dtype)
    return model.eval()


def from_huggingface(model_or_dir: nn.Module | str | Path) -> LongseqModel:
    """Convert a transformers model, a local HF folder (config.json + weights; no hub), or a
    local GGUF file (`*.gguf`, through transformers' GGUF loader: needs gguf, accelerate)."""
    if isinstance(model_or_dir, nn.Module):
        return convert(model_or_dir)
    if isinstance(model_or_dir, (str, Path)):
        from longseq.convert.local import is_gguf, load_folder, load_gguf

        if is_gguf(model_or_dir):
            return convert(load_gguf(model_or_dir, SUPPORTED))
        return convert(load_folder(model_or_dir, SUPPORTED))
    raise ValueError(
        "from_huggingface takes a transformers model or the path of a local model folder, "
        f"got {type(model_or_dir).__name__}"
    )


# Imported last: longify builds on from_huggingface. The function takes the name of its module
# in this namespace, so `from longseq.convert import longify` gives the function.
from longseq.convert.longify import longify  # noqa: E402

__all__ = ["CONVERTERS", "SUPPORTED", "convert", "from_huggingface", "longify"]
