"""What the Hugging Face converters share: heads, activations, the BERT-family config and
weight names, and the name map that moves weights across with shape checks.

A converter reads the HF model only: its config gives a `ModelConfig`, then a map
{longseq state-dict name: HF state-dict name} says where every weight comes from.
`load_mapped` copies each tensor after checking that both sides have the same shape; every
longseq weight must have a source and every HF weight must be used (or be named as unused on
purpose, e.g. a pooler no head reads), so nothing is dropped or invented silently.

BERT, RoBERTa, Longformer and BigBird share one body (post-LN blocks, embedding LayerNorm,
segment embeddings) and two head styles:

    style    masked LM                           sequence classification
    bert     cls.predictions.{transform,decoder}  pooler.dense (tanh) -> classifier
    roberta  lm_head.{dense,layer_norm,decoder}   classifier.dense (tanh) -> classifier.out_proj
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from longseq.models import LongseqModel, ModelConfig, build_model

# HF class-name suffix -> longseq architecture (the base model, e.g. `BertModel`, is "encoder").
HEADS: dict[str, str] = {
    "ForMaskedLM": "masked-lm",
    "ForSequenceClassification": "sequence-classification",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}
# HF `hidden_act` -> longseq activation. The tanh forms of GELU agree to float rounding.
ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def architecture_of(hf_model: nn.Module, heads: Iterable[str] = HEADS) -> str:
    """The longseq architecture of an HF model: its base model or one of `heads` (suffixes)."""
    name = type(hf_model).__name__
    if getattr(hf_model, "base_model", None) is hf_model:
        return "encoder"
    for suffix in heads:
        if name.endswith(suffix):
            return HEADS[suffix]
    supported = ", ".join(["<Family>Model", *(f"<Family>{s}" for s in heads)])
    raise ValueError(f"{name}: this head is not supported; supported classes: {supported}")


def body_prefix(hf_model: nn.Module) -> str:
    """State-dict prefix of the body: "" for a base model, e.g. "bert." under a head."""
    if getattr(hf_model, "base_model", None) is hf_model:
        return ""
    return f"{hf_model.base_model_prefix}."


def activation(hidden_act: Any) -> str:
    if not isinstance(hidden_act, str) or hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"hidden_act {hidden_act!r} has no longseq equivalent; supported: "
            f"{', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[hidden_act]


def _check_encoder_only(c: Any) -> None:
    if getattr(c, "is_decoder", False) or getattr(c, "add_cross_attention", False):
        raise ValueError(
            f"{c.model_type}: decoder / cross-attention configurations are not supported; "
            "convert an encoder (is_decoder=False, add_cross_attention=False)"
        )
    kind = getattr(c, "position_embedding_type", "absolute")
    if kind not in (None, "absolute"):
        raise ValueError(
            f"{c.model_type}: position_embedding_type={kind!r} is not supported; only 'absolute'"
        )


def label_names(c: Any) -> list[str] | None:
    """HF id2label as a list, or None when it holds only the default LABEL_i names."""
    id2label = getattr(c, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(c.num_labels)]
    if all(n == f"LABEL_{i}" for i, n in enumerate(names)) or not all(names):
        return None
    return names


def bert_family_config(
    hf_model: nn.Module, architecture: str, *, position_offset: int = 0, **fields: Any
) -> ModelConfig:
    """ModelConfig of a BERT-family body (post-LN, embedding LayerNorm, learned positions)."""
    c = hf_model.config
    _check_encoder_only(c)
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    cls = getattr(c, "cls_token_id", None)
    if cls is None:
        cls = getattr(c, "bos_token_id", None)
    values: dict[str, Any] = {
        "architecture": architecture,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "max_length": c.max_position_embeddings - position_offset,
        "position": "learned",
        "position_offset": position_offset,
        "type_vocab_size": c.type_vocab_size,
        "norm": "post",
        "embedding_norm": True,
        "layer_norm_eps": c.layer_norm_eps,
        "activation": activation(c.hidden_act),
        "dropout": c.hidden_dropout_prob,
        "attention_dropout": c.attention_probs_dropout_prob,
        "pad_token_id": pad,
        "tie_word_embeddings": lm_tied(hf_model),
        "lm_transform": True,
        "num_labels": c.num_labels,
        "label_names": label_names(c),
        "pooling": "cls",
        "classifier_dense": True,
        "init_std": c.initializer_range,
    }
    if cls is not None and 0 <= cls < c.vocab_size:
        values["cls_token_id"] = cls
    values.update(fields)
    return ModelConfig(**values)


# longseq activation -> the HF `hidden_act` that computes it (export)
HF_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu",
    "gelu_tanh": "gelu_pytorch_tanh",
    "relu": "relu",
    "silu": "silu",
}


def refuse(family: str, problems: list[str]) -> None:
    """ValueError naming every setting of a config that `family` cannot express."""
    if problems:
        raise ValueError(f"no Hugging Face {family} computes this model: " + "; ".join(problems))


def hf_class_name(prefix: str, config: ModelConfig, heads: Iterable[str] = HEADS) -> str:
    """e.g. ("Bert", masked-lm) -> "BertForMaskedLM"; ValueError for a head HF lacks."""
    if config.architecture == "encoder":
        return f"{prefix}Model"
    for suffix in heads:
        if HEADS[suffix] == config.architecture:
            return prefix + suffix
    raise ValueError(f"Hugging Face's {prefix} has no {config.architecture} head")


def bert_family_problems(config: ModelConfig, classifier: tuple[str, ...] = ("tanh",)) -> list[str]:
    """What keeps `config` from being a BERT-family body (post-LN, embedding LayerNorm,
    learned positions, biases) with `classifier` activations before its classifier."""
    want: dict[str, Any] = {
        "norm": "post",
        "norm_type": "layer",
        "embedding_norm": True,
        "position": "learned",
        "feed_forward": "plain",
        "bias": True,
        "feed_forward_bias": True,
        "reversible": False,
        "causal": False,
        "grouped": False,
    }
    if config.architecture == "masked-lm":
        want.update(lm_transform=True, output_bias=True)
    if config.architecture == "sequence-classification":
        want.update(pooling="cls", classifier_dense=True)
    if "tanh" in classifier:  # BERT, RoBERTa, Longformer (BigBird checks its QA head itself)
        want["qa_head"] = "linear"
    problems = [
        f"{k}={getattr(config, k)!r} (needs {v!r})"
        for k, v in want.items()
        if getattr(config, k) != v
    ]
    if config.architecture == "sequence-classification" and (
        config.classifier_activation not in classifier
    ):
        problems.append(
            f"classifier_activation={config.classifier_activation!r} (needs "
            f"{' or '.join(map(repr, classifier))})"
        )
    if config.architecture == "question-answering" and config.num_labels != 2:
        problems.append(f"num_labels={config.num_labels} (question answering needs 2)")
    return problems


def bert_family_hf_fields(config: ModelConfig, max_positions: int) -> dict[str, Any]:
    """The HF config fields of a BERT-family body (the inverse of `bert_family_config`)."""
    fields: dict[str, Any] = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": max_positions,
        "type_vocab_size": max(config.type_vocab_size, 1),
        "layer_norm_eps": config.layer_norm_eps,
        "hidden_act": HF_ACTIVATIONS[config.activation],
        "hidden_dropout_prob": config.dropout,
        "attention_probs_dropout_prob": config.attention_dropout,
        "pad_token_id": config.pad_token_id,
        "initializer_range": config.init_std,
        "num_labels": config.num_labels,
        "tie_word_embeddings": config.tie_word_embeddings,
    }
    if config.label_names:
        fields["id2label"] = dict(enumerate(config.label_names))
        fields["label2id"] = {n: i for i, n in enumerate(config.label_names)}
    for role in ("cls", "sep"):
        value = getattr(config, f"{role}_token_id", None)
        if value is not None:
            fields[f"{role}_token_id"] = value
    return fields


def bert_family_unused(config: ModelConfig, prefix: str, unused: list[str]) -> list[str]:
    """HF weights an export leaves as zeros: the segment table of a model without segments
    (one row, which adds zero), besides the converter's `unused` (the pooler)."""
    if not config.type_vocab_size:
        unused = [*unused, f"{prefix}embeddings.token_type_embeddings."]
    return unused


def lm_tied(hf_model: nn.Module) -> bool:
    """Whether the LM decoder shares the word embeddings (True when there is no decoder)."""
    out = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    if out is None:
        return bool(getattr(hf_model.config, "tie_word_embeddings", True))
    emb = hf_model.get_input_embeddings().weight
    return out.weight is emb or (out.weight.shape == emb.shape and torch.equal(out.weight, emb))


def _linear(names: dict[str, str], ours: str, theirs: str) -> None:
    names[f"{ours}.weight"] = f"{theirs}.weight"
    names[f"{ours}.bias"] = f"{theirs}.bias"


def bert_body_names(
    config: ModelConfig, prefix: str, projections: Iterable[str] = ("query", "key", "value")
) -> dict[str, str]:
    """longseq body name -> HF name for a BERT-family encoder under `prefix`."""
    p = prefix
    names = {
        "body.embeddings.word.weight": f"{p}embeddings.word_embeddings.weight",
        "body.embeddings.position.weight": f"{p}embeddings.position_embeddings.weight",
    }
    if config.type_vocab_size:
        names["body.embeddings.token_type.weight"] = f"{p}embeddings.token_type_embeddings.weight"
    _linear(names, "body.embeddings.norm", f"{p}embeddings.LayerNorm")
    for i in range(config.num_layers):
        ours, theirs = f"body.layers.{i}", f"{p}encoder.layer.{i}"
        for proj in projections:
            _linear(names, f"{ours}.attn.attention.{proj}", f"{theirs}.attention.self.{proj}")
        _linear(names, f"{ours}.attn.attention.out", f"{theirs}.attention.output.dense")
        _linear(names, f"{ours}.attn.norm", f"{theirs}.attention.output.LayerNorm")
        _linear(names, f"{ours}.ff.feed_forward.fc1", f"{theirs}.intermediate.dense")
        _linear(names, f"{ours}.ff.feed_forward.fc2", f"{theirs}.output.dense")
        _linear(names, f"{ours}.ff.norm", f"{theirs}.output.LayerNorm")
    return names


def head_names(config: ModelConfig, style: str, prefix: str) -> tuple[dict[str, str], list[str]]:
    """(longseq head name -> HF name, HF names left unused on purpose) for one head style."""
    arch, names = config.architecture, {}
    unused = [f"{prefix}pooler."]  # only BERT's classifier reads the pooler (below)
    if arch == "masked-lm":
        lm = "cls.predictions." if style == "bert" else "lm_head."
        _linear(
            names,
            "lm_head.transform.0",
            f"{lm}transform.dense" if style == "bert" else f"{lm}dense",
        )
        _linear(
            names,
            "lm_head.transform.2",
            f"{lm}transform.LayerNorm" if style == "bert" else f"{lm}layer_norm",
        )
        names["lm_head.decoder.bias"] = f"{lm}decoder.bias"
        unused.append(f"{lm}bias")  # an alias of decoder.bias (tied in HF)
        if config.tie_word_embeddings:
            unused.append(f"{lm}decoder.weight")  # the word embeddings
        else:
            names["lm_head.decoder.weight"] = f"{lm}decoder.weight"
    elif arch == "sequence-classification":
        if style == "bert":
            _linear(names, "head.dense", f"{prefix}pooler.dense")
            _linear(names, "head.out", "classifier")
            unused = []
        else:
            _linear(names, "head.dense", "classifier.dense")
            _linear(names, "head.out", "classifier.out_proj")
    elif arch == "token-classification":
        _linear(names, "classifier", "classifier")
    elif arch == "question-answering":
        if config.num_labels != 2:
            raise ValueError(
                f"question answering needs num_labels=2 (start, end), got {config.num_labels}"
            )
        _linear(names, "qa", "qa_outputs")
    return names, unused


def load_mapped(
    model: LongseqModel,
    hf_state: dict[str, Tensor],
    names: dict[str, str],
    unused: Iterable[str] = (),
    what: str = "the Hugging Face model",
) -> LongseqModel:
    """Copy hf_state[names[k]] into model's k for every k, after checking names and shapes.

    `unused`: HF names (or name prefixes ending in ".") that may be left out on purpose.
    """
    ours = model.state_dict()
    tied = model.tied_keys()
    no_source = sorted(k for k in ours if k not in names and k not in tied)
    if no_source:  # a converter that forgets a weight would leave it random: refuse
        raise ValueError(f"conversion leaves longseq weights without a source: {no_source[:5]}")
    absent = sorted(v for v in names.values() if v not in hf_state)
    if absent:
        raise ValueError(
            f"{what} lacks weights its config implies: {absent[:5]}"
            f"{' ...' if len(absent) > 5 else ''} ({len(absent)} missing)"
        )
    bad = [
        f"{v}: weights {tuple(hf_state[v].shape)} vs config {tuple(ours[k].shape)}"
        for k, v in names.items()
        if tuple(hf_state[v].shape) != tuple(ours[k].shape)
    ]
    if bad:
        raise ValueError(
            f"{what}: its config does not match its weights (check hidden_size, "
            "intermediate_size, vocab_size, max_position_embeddings, type_vocab_size, "
            "num_labels): " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        )
    used = set(names.values())
    skip = tuple(unused)
    left = sorted(
        k
        for k in hf_state
        if k not in used and not any(k == s or (s.endswith(".") and k.startswith(s)) for s in skip)
    )
    if left:
        raise ValueError(
            f"{what} has weights this conversion would drop: {left[:5]}"
            f"{' ...' if len(left) > 5 else ''}; it uses a feature longseq does not convert"
        )
    with torch.no_grad():
        for k, v in names.items():
            ours[k].copy_(hf_state[v])
    return model


def bert_family_names(
    hf_model: nn.Module,
    config: ModelConfig,
    style: str,
    projections: Iterable[str] = ("query", "key", "value"),
) -> tuple[dict[str, str], list[str]]:
    """(longseq name -> HF name, HF names unused on purpose) of a BERT-family model: the one
    table that both converting (`convert_bert_family`) and exporting
    (`longseq.convert.to_hf`) read."""
    prefix = body_prefix(hf_model)
    names = bert_body_names(config, prefix, projections)
    head, unused = head_names(config, style, prefix)
    names.update(head)
    return names, unused


def convert_bert_family(
    hf_model: nn.Module,
    config: ModelConfig,
    style: str,
    projections: Iterable[str] = ("query", "key", "value"),
) -> LongseqModel:
    """Build the longseq model of `config` and fill it from a BERT-family HF model."""
    names, unused = bert_family_names(hf_model, config, style, projections)
    model = build_model(config, seed=0)
    return load_mapped(model, hf_model.state_dict(), names, unused, type(hf_model).__name__)


__all__ = [
    "ACTIVATIONS",
    "HEADS",
    "HF_ACTIVATIONS",
    "activation",
    "architecture_of",
    "bert_body_names",
    "bert_family_config",
    "bert_family_hf_fields",
    "bert_family_names",
    "bert_family_problems",
    "bert_family_unused",
    "body_prefix",
    "convert_bert_family",
    "head_names",
    "hf_class_name",
    "label_names",
    "lm_tied",
    "load_mapped",
    "refuse",
]
