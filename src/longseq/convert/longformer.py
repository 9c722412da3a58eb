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

from longseq.convert import common
from longseq.convert.common import architecture_of, bert_family_config, convert_bert_family
from longseq.convert.roberta import check_lm_head
from longseq.models import LongseqModel, ModelConfig

PROJECTIONS = ("query", "key", "value", "query_global", "key_global", "value_global")


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
        sep_token_id=_token(c, "sep_token_id"),
    )
    return convert_bert_family(hf_model, config, style="roberta", projections=PROJECTIONS)


def _token(c: Any, name: str) -> int | None:
    value = getattr(c, name, None)
    return value if isinstance(value, int) and 0 <= value < c.vocab_size else None


# ----------------------------------------------------------------------- export (to_hf.py)
def hf_class_name(config: ModelConfig) -> str:
    return common.hf_class_name("Longformer", config)


def hf_position_offset(config: ModelConfig) -> int:
    return config.pad_token_id + 1  # positions from input_ids, as RoBERTa


def hf_config(config: ModelConfig) -> Any:
    """A BERT-family body with Longformer layers (a longified MiniLM, a converted Longformer):
    HF's LongformerConfig with one attention_window per layer."""
    from transformers import LongformerConfig

    problems = common.bert_family_problems(config)
    ws = []
    for i in range(config.num_layers):
        _, opts = config.layer_spec(i)
        extra = {
            k: v for k, v in opts.items() if k != "window" and v not in (1, [1] * config.num_heads)
        }
        if extra:
            problems.append(f"layer {i}: {extra} (HF's Longformer has windows only: no dilation)")
        ws.append(opts.get("window", 512))
    if config.architecture == "masked-lm" and config.activation != "gelu":
        problems.append(f"activation={config.activation!r} (the LM head applies 'gelu')")
    sequence_level = config.architecture in ("sequence-classification", "question-answering")
    if sequence_level and not config.global_cls:
        problems.append("global_cls=False (HF makes the first token global)")
    if config.architecture == "question-answering" and config.sep_token_id is None:
        problems.append(
            "no sep_token_id (HF's QA head makes the tokens before the first separator global)"
        )
    common.refuse("Longformer", problems)
    fields = common.bert_family_hf_fields(config, config.max_length + hf_position_offset(config))
    return LongformerConfig(**fields, attention_window=ws)


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    names, unused = common.bert_family_names(hf_model, config, "roberta", PROJECTIONS)
    return names, common.bert_family_unused(config, common.body_prefix(hf_model), unused)
