"""RoBERTa (and XLM-RoBERTa) -> longseq: BERT's body with positions that start after the
padding index.

HF numbers the positions of the non-padding tokens padding_idx + 1, padding_idx + 2, ...
(`create_position_ids_from_input_ids`); with right padding the real token i gets
padding_idx + 1 + i, which is longseq's learned position i with position_offset =
padding_idx + 1. (Padding tokens get position padding_idx in HF; they are masked anyway.)
So max_length = max_position_embeddings - position_offset (514 - 2 = 512 for roberta-base).

Heads: base model, masked LM (lm_head: dense, exact GELU, LayerNorm, decoder), sequence
classification (classifier.dense + tanh on <s>, then out_proj), token classification,
question answering.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from longseq.convert import common
from longseq.convert.common import architecture_of, bert_family_config, convert_bert_family
from longseq.models import LongseqModel, ModelConfig


def check_lm_head(config_hidden_act: str, architecture: str) -> None:
    """RoBERTa-style LM heads apply exact GELU whatever hidden_act says; longseq's LM head
    uses the model's activation, so they must agree."""
    if architecture == "masked-lm" and config_hidden_act != "gelu":
        raise ValueError(
            f"this masked-LM head applies exact GELU but hidden_act={config_hidden_act!r}; "
            "longseq's LM head uses the body's activation, so only hidden_act='gelu' converts"
        )


def convert(hf_model: nn.Module) -> LongseqModel:
    arch = architecture_of(hf_model)
    check_lm_head(hf_model.config.hidden_act, arch)
    offset = hf_model.config.pad_token_id + 1
    config = bert_family_config(hf_model, arch, attention="full", position_offset=offset)
    return convert_bert_family(hf_model, config, style="roberta")


# ----------------------------------------------------------------------- export (to_hf.py)
def hf_class_name(config: ModelConfig) -> str:
    return common.hf_class_name("Roberta", config)


def hf_position_offset(config: ModelConfig) -> int:
    return config.pad_token_id + 1  # the first real token's position


def hf_config(config: ModelConfig) -> Any:
    from transformers import RobertaConfig

    problems = common.bert_family_problems(config)
    if config.architecture == "masked-lm" and config.activation != "gelu":
        problems.append(f"activation={config.activation!r} (RoBERTa's LM head applies 'gelu')")
    common.refuse("RoBERTa", problems)
    fields = common.bert_family_hf_fields(config, config.max_length + hf_position_offset(config))
    return RobertaConfig(**fields)


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    names, unused = common.bert_family_names(hf_model, config, style="roberta")
    return names, common.bert_family_unused(config, common.body_prefix(hf_model), unused)
