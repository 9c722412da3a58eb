"""BERT (and MiniLM, which is a BERT) -> longseq: full attention, post-LN, learned positions
0..n-1, segment embeddings.

Export (`longseq.convert.to_hf`) reads the same name table the other way; a model whose body is
BERT's with full attention and positions from 0 exports as a BERT.

Heads: base model, masked LM (cls.predictions), sequence classification (the pooler's dense +
tanh on [CLS], then the classifier), token classification, question answering.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from longseq.convert import common
from longseq.convert.common import architecture_of, bert_family_config, convert_bert_family
from longseq.models import LongseqModel, ModelConfig


def convert(hf_model: nn.Module) -> LongseqModel:
    config = bert_family_config(hf_model, architecture_of(hf_model), attention="full")
    return convert_bert_family(hf_model, config, style="bert")


# ----------------------------------------------------------------------- export (to_hf.py)
def hf_class_name(config: ModelConfig) -> str:
    return common.hf_class_name("Bert", config)


def hf_position_offset(config: ModelConfig) -> int:
    return 0  # BERT numbers positions 0, 1, ...


def hf_config(config: ModelConfig) -> Any:
    from transformers import BertConfig

    common.refuse("BERT", common.bert_family_problems(config))
    return BertConfig(**common.bert_family_hf_fields(config, config.max_length))


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    names, unused = common.bert_family_names(hf_model, config, style="bert")
    return names, common.bert_family_unused(config, common.body_prefix(hf_model), unused)
