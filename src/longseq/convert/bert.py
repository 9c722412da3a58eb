"""BERT (and MiniLM, which is a BERT) -> longseq: full attention, post-LN, learned positions
0..n-1, segment embeddings.

Heads: base model, masked LM (cls.predictions), sequence classification (the pooler's dense +
tanh on [CLS], then the classifier), token classification, question answering.
"""

from __future__ import annotations

from torch import nn

from longseq.convert.common import architecture_of, bert_family_config, convert_bert_family
from longseq.models import LongseqModel


def convert(hf_model: nn.Module) -> LongseqModel:
    config = bert_family_config(hf_model, architecture_of(hf_model), attention="full")
    return convert_bert_family(hf_model, config, style="bert")
