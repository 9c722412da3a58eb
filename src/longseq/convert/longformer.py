"""Longformer -> longseq: RoBERTa's body with sliding-window + global attention per layer.

HF's `attention_window` (an int, or one even int per layer) is the total window w: w/2 keys
on each side, as longseq's `window`. Per-layer windows become `layer_attention` entries. The
global projections (query_global, key_global, value_global) map one to one. HF pads the input
to a multiple of the window inside the model; longseq pads inside each layer, and neither
padding changes the real tokens' outputs. Positions start at padding_idx + 1 (see roberta.py).

Global tokens: give `global_attention_mask` as to HF. Without one, sequence classification
makes the first token global in both; HF's question answering instead makes the question
(the tokens before the first separator) global, while longseq's makes the first token global,
so pass the mask explicitly for QA.

Heads: base model, masked LM, sequence classification, token classification, QA.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from longseq.convert.common import architecture_of, bert_family_config, convert_bert_family
from longseq.convert.roberta import check_lm_head
from longseq.models import LongseqModel


def windows(attention_window: Any, num_layers: int) -> list[int]:
    """HF's attention_window as one even window per layer."""
    w = attention_window
    ws = [w] * num_layers if isinstance(w, int) else list(w)
    if len(ws) != num_layers:
        raise ValueError(
            f"attention_window has {len(ws)} values but num_hidden_layers={num_layers}; "
            "give one int or one per layer"
        )
    bad = [x for x in ws if not isinstance(x, int) or x < 2 or x % 2]
    if bad:
        raise ValueError(f"attention_window values must be even ints >= 2, got {bad}")
    return ws


def convert(hf_model: nn.Module) -> LongseqModel:
    c = hf_model.config
    arch = architecture_of(hf_model)
    check_lm_head(c.hidden_act, arch)
    ws = windows(c.attention_window, c.num_hidden_layers)
    per_layer = None if len(set(ws)) == 1 else [{"window": w} for w in ws]
    config = bert_family_config(
        hf_model,
        arch,
        position_offset=c.pad_token_id + 1,
        attention="longformer",
        attention_options={"window": ws[0]},
        layer_attention=per_layer,
        global_cls=True,
    )
    projections = ("query", "key", "value", "query_global", "key_global", "value_global")
    return convert_bert_family(hf_model, config, style="roberta", projections=projections)
