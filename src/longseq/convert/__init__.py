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

Back out (`longseq export MODEL OUT --format hf|torch|onnx`): `longseq.convert.to_hf` builds
the transformers model with the same outputs (each family's name table read the other way),
`longseq.convert.program` a torch.export program or an ONNX file (docs/convert.md, Export).

`transformers` is needed only here, to read the HF model (the `convert` extra).
"""

from longseq.convert.converters import CONVERTERS, SUPPORTED, convert, from_huggingface

# `longify` the function shadows `longseq.convert.longify` the module in this namespace: import
# the module's other names from the module itself (`from longseq.convert.longify import ...`).
from longseq.convert.longify import longify

__all__ = ["CONVERTERS", "SUPPORTED", "convert", "from_huggingface", "longify"]
