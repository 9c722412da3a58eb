"""longseq models: one config, one Transformer body, task heads, safetensors save/load.

    from longseq.models import ModelConfig, build_model, from_pretrained
    config = ModelConfig(architecture="sequence-classification", attention="longformer",
                         attention_options={"window": 128}, num_labels=4, max_length=4096)
    model = build_model(config, seed=0)
    out = model(input_ids, attention_mask=mask, labels=labels)   # out.loss, out.logits
    model.save_pretrained("my-model"); model = from_pretrained("my-model")

`models` sits on `attention` and `layers` and knows nothing of training.
"""

from longseq.models.base import CONFIG_NAME, WEIGHTS_NAME, LongseqModel, read_config
from longseq.models.config import ARCHITECTURES, POSITIONS, ModelConfig
from longseq.models.factory import build_model, from_pretrained
from longseq.models.heads import (
    Encoder,
    ForCausalLM,
    ForMaskedLM,
    ForQuestionAnswering,
    ForSequenceClassification,
    ForTokenClassification,
)
from longseq.models.transformer import ModelOutput

__all__ = [
    "ARCHITECTURES",
    "CONFIG_NAME",
    "POSITIONS",
    "WEIGHTS_NAME",
    "Encoder",
    "ForCausalLM",
    "ForMaskedLM",
    "ForQuestionAnswering",
    "ForSequenceClassification",
    "ForTokenClassification",
    "LongseqModel",
    "ModelConfig",
    "ModelOutput",
    "build_model",
    "from_pretrained",
    "read_config",
]
