"""Reformer -> longseq: a reversible pre-LN stack of local and LSH layers, axial positions.

Hugging Face's Reformer, layer by layer (X1 = X2 = embeddings, x = [X1; X2] at the end):

    Y1 = X1 + Attn(LN(X2))      attention.self_attention (lsh or local), attention.output.dense
    Y2 = X2 + FF(LN(Y1))        feed_forward.dense.dense -> act -> feed_forward.output.dense
    out = LN([Y1; Y2])          encoder.layer_norm over 2 * hidden; the LM head reads 2 * hidden

is longseq's `ModelConfig(reversible=True, reversible_output="concat", norm="pre")`, with
one `layer_attention` entry per layer: "lsh-hf" (shared query/key) or "local-hf" (separate
q, k, v), no projection biases. Embeddings: word + axial (`weights.0`, `weights.1` = longseq's
`weight1` (a, 1, d1), `weight2` (1, b, d2)) or learned positions, no LayerNorm.

Attention is reproduced exactly, including what Hugging Face does that longseq's own layers do
not, through the ports `lsh-hf` and `local-hf` (`longseq.convert.hf_attention`; docs/convert.md,
"Reformer"):
- LSH: the same rotations (longseq's `seed` = HF's `hash_seed`; the same draw), int or
  factorised `num_buckets`, the look-back across hash rounds.
- local: the look-around wraps from the first chunk to the last.
- Both depend on the padded length: HF pads the input to a multiple of the least common
  multiple of the layers' chunk lengths, so every layer gets `pad_multiple` = that lcm.
- `is_decoder=True` makes every layer causal (`causal_attention`, or the causal-lm head).

Heads: `ReformerModel` (encoder), `ReformerModelWithLMHead` (causal-lm), `ReformerForMaskedLM`
(masked-lm). The LM decoder is untied (2 * hidden wide); transformers 5's
`ReformerOnlyLMHead` never adds `lm_head.bias`, so longseq's decoder bias is zero unless the
HF decoder has a bias of its own.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from longseq import attention
from longseq.convert.common import HF_ACTIVATIONS, activation, body_prefix, load_mapped, refuse
from longseq.models import LongseqModel, ModelConfig, build_model

# HF class -> longseq architecture. Sequence classification and QA are not converted: HF's
# classification head maps 2 * hidden -> hidden -> labels, longseq's keeps the width.
CLASSES: dict[str, str] = {
    "ReformerModel": "encoder",
    "ReformerModelWithLMHead": "causal-lm",
    "ReformerForMaskedLM": "masked-lm",
}
# Stands in for the bias HF's LM decoder does not have (copied as zeros).
_NO_BIAS = "<no decoder bias: zeros>"


def architecture(hf_model: nn.Module) -> str:
    name = type(hf_model).__name__
    if name not in CLASSES:
        raise ValueError(
            f"{name}: this Reformer class is not supported; supported: {', '.join(CLASSES)}"
        )
    return CLASSES[name]


def _self_attentions(hf_model: nn.Module) -> list[nn.Module]:
    base = hf_model.base_model
    return [layer.attention.self_attention for layer in base.encoder.layers]


def layer_options(hf_model: nn.Module) -> list[dict[str, Any]]:
    """One `layer_attention` entry per layer, read from the HF layers themselves (where HF
    keeps what it actually uses, e.g. a `num_buckets` it set on its first call)."""
    attns = _self_attentions(hf_model)
    pad = math.lcm(*(a.chunk_length for a in attns))  # HF pads the input to this multiple
    out = []
    for i, a in enumerate(attns):
        kind = type(a).__name__
        if kind == "LSHSelfAttention":
            out.append(_lsh_options(a, i))
        elif kind == "LocalSelfAttention":
            out.append(
                {
                    "attention": "local-hf",
                    "chunk_length": a.chunk_length,
                    "num_chunks_before": a.num_chunks_before,
                    "num_chunks_after": a.num_chunks_after,
                }
            )
        else:
            raise ValueError(f"layer {i}: unknown Reformer attention {kind}")
        if pad != a.chunk_length:
            out[-1]["pad_multiple"] = pad
    return out


def _lsh_options(a: nn.Module, i: int) -> dict[str, Any]:
    if (a.num_chunks_before, a.num_chunks_after) != (1, 0):
        raise ValueError(
            f"layer {i}: lsh_num_chunks_before={a.num_chunks_before}, lsh_num_chunks_after="
            f"{a.num_chunks_after}; longseq's LSH looks back exactly one chunk (1 and 0)"
        )
    if a.num_buckets is None:
        raise ValueError(
            f"layer {i}: num_buckets is None: Hugging Face picks it on its first forward call "
            "from that call's padded length (and keeps it); set config.num_buckets (an even int "
            "or a list of factors) when building the model, or run it once on inputs of the "
            "length you will use, then convert"
        )
    seed = a.hash_seed
    if seed is None:
        warnings.warn(
            "hash_seed is None: Hugging Face draws new LSH rotations on every call, so no fixed "
            "model equals it; the converted model uses seed 0 (set config.hash_seed to compare)",
            stacklevel=3,
        )
        seed = 0
    nb = a.num_buckets
    return {
        "attention": "lsh-hf",
        "num_buckets": nb if isinstance(nb, int) else list(nb),
        "n_hashes": a.num_hashes,
        "chunk_length": a.chunk_length,
        "seed": seed,
    }


def model_config(hf_model: nn.Module) -> ModelConfig:
    c = hf_model.config
    arch = architecture(hf_model)
    head = c.attention_head_size * c.num_attention_heads
    if head != c.hidden_size:
        raise ValueError(
            f"attention_head_size * num_attention_heads = {head} != hidden_size = "
            f"{c.hidden_size}; longseq's heads split hidden_size (head_dim = hidden / heads)"
        )
    layers = layer_options(hf_model)
    decoders = {bool(a.is_decoder) for a in _self_attentions(hf_model)}
    if len(decoders) != 1:
        raise ValueError("some layers are causal (is_decoder) and some not")
    dropouts = [c.lsh_attention_probs_dropout_prob, c.local_attention_probs_dropout_prob]
    values: dict[str, Any] = {
        "architecture": arch,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_layers": len(layers),
        "num_heads": c.num_attention_heads,
        "intermediate_size": c.feed_forward_size,
        "max_length": c.max_position_embeddings,
        "attention": layers[0]["attention"],
        "layer_attention": layers,
        "causal_attention": decoders.pop(),
        "norm": "pre",
        "layer_norm_eps": c.layer_norm_eps,
        "activation": activation(c.hidden_act),
        "bias": False,
        "dropout": c.hidden_dropout_prob,
        "attention_dropout": max(dropouts),  # one value in longseq (training only)
        "reversible": True,
        "reversible_output": "concat",
        "feed_forward_chunk_size": c.chunk_size_feed_forward or None,
        "pad_token_id": c.pad_token_id if c.pad_token_id is not None else 0,
        "tie_word_embeddings": False,
        "init_std": c.initializer_range,
    }
    if c.axial_pos_embds:
        shape, dims = list(c.axial_pos_shape), list(c.axial_pos_embds_dim)
        if len(shape) != 2 or len(dims) != 2:
            raise ValueError(
                f"axial_pos_shape {shape} / axial_pos_embds_dim {dims}: longseq's axial "
                "positions have two factors (Hugging Face's eval mode needs two as well)"
            )
        values.update(position="axial", axial_shape=shape, axial_dims=dims)
        values["max_length"] = min(c.max_position_embeddings, math.prod(shape))
    else:
        values["position"] = "learned"
    return ModelConfig(**values)


def weight_names(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    """(longseq name -> HF name, HF names left unused on purpose)."""
    p = body_prefix(hf_model)
    names = {"body.embeddings.word.weight": f"{p}embeddings.word_embeddings.weight"}
    pos = f"{p}embeddings.position_embeddings"
    if config.position == "axial":
        names["body.embeddings.position.weight1"] = f"{pos}.weights.0"
        names["body.embeddings.position.weight2"] = f"{pos}.weights.1"
    else:
        names["body.embeddings.position.weight"] = f"{pos}.embedding.weight"
    for i in range(config.num_layers):
        ours, theirs = f"body.layers.{i}", f"{p}encoder.layers.{i}"
        att, hf_att = f"{ours}.attn.attention", f"{theirs}.attention.self_attention"
        if attention.get(config.layer_spec(i)[0]).shared_qk:
            names[f"{att}.query.weight"] = f"{hf_att}.query_key.weight"
        else:
            names[f"{att}.query.weight"] = f"{hf_att}.query.weight"
            names[f"{att}.key.weight"] = f"{hf_att}.key.weight"
        names[f"{att}.value.weight"] = f"{hf_att}.value.weight"
        names[f"{att}.out.weight"] = f"{theirs}.attention.output.dense.weight"
        pairs = {
            "attn.norm": "attention.layer_norm",
            "ff.norm": "feed_forward.layer_norm",
            "ff.feed_forward.fc1": "feed_forward.dense.dense",
            "ff.feed_forward.fc2": "feed_forward.output.dense",
        }
        for a, b in pairs.items():
            for w in ("weight", "bias"):
                names[f"{ours}.{a}.{w}"] = f"{theirs}.{b}.{w}"
    for w in ("weight", "bias"):
        names[f"body.final_norm.{w}"] = f"{p}encoder.layer_norm.{w}"
    unused: list[str] = []
    if config.architecture in ("causal-lm", "masked-lm"):
        names["lm_head.decoder.weight"] = "lm_head.decoder.weight"
        has_bias = hf_model.lm_head.decoder.bias is not None
        names["lm_head.decoder.bias"] = "lm_head.decoder.bias" if has_bias else _NO_BIAS
        unused.append("lm_head.bias")  # the decoder's bias (an alias) or, in v5, never read
    return names, unused


def convert(hf_model: nn.Module) -> LongseqModel:
    """The longseq model equal to a Hugging Face Reformer in eval mode."""
    config = model_config(hf_model)
    names, unused = weight_names(hf_model, config)
    state: dict[str, Tensor] = dict(hf_model.state_dict())
    if _NO_BIAS in names.values():
        state[_NO_BIAS] = torch.zeros(config.vocab_size)
    model = build_model(config, seed=0)
    return load_mapped(model, state, names, unused, type(hf_model).__name__).eval()


# ----------------------------------------------------------------------- export (to_hf.py)
_KINDS = {"lsh-hf": "lsh", "local-hf": "local"}
# ReformerConfig field <- the option of that kind's layers (one value per kind in HF)
_HF_OPTIONS = {
    "lsh": {
        "lsh_attn_chunk_length": "chunk_length",
        "num_buckets": "num_buckets",
        "num_hashes": "n_hashes",
        "hash_seed": "seed",
    },
    "local": {
        "local_attn_chunk_length": "chunk_length",
        "local_num_chunks_before": "num_chunks_before",
        "local_num_chunks_after": "num_chunks_after",
    },
}


def hf_class_name(config: ModelConfig) -> str:
    return {v: k for k, v in CLASSES.items()}[config.architecture]


def hf_position_offset(config: ModelConfig) -> int | None:
    return 0 if config.position == "learned" else None


def hf_config(config: ModelConfig) -> Any:
    """The inverse of `model_config`: one value per kind of layer, as ReformerConfig has."""
    from transformers import ReformerConfig

    want = {
        "reversible": True,
        "reversible_output": "concat",
        "norm": "pre",
        "norm_type": "layer",
        "bias": False,
        "embedding_norm": False,
        "type_vocab_size": 0,
        "feed_forward": "plain",
        "tie_word_embeddings": False,
    }
    problems = [
        f"{k}={getattr(config, k)!r} (needs {v!r})"
        for k, v in want.items()
        if getattr(config, k) != v
    ]
    if config.architecture not in CLASSES.values():
        problems.append(
            f"architecture {config.architecture!r} (Reformer: {', '.join(CLASSES.values())})"
        )
    if config.position not in ("axial", "learned"):
        problems.append(f"position={config.position!r} (Reformer: axial or learned)")
    specs = [config.layer_spec(i) for i in range(config.num_layers)]
    chunk = math.lcm(*(o.get("chunk_length", 64) for _, o in specs))
    values: dict[str, dict[str, Any]] = {"lsh": {}, "local": {}}
    for i, (name, opts) in enumerate(specs):
        kind = _KINDS[name]
        if opts.get("pad_multiple", opts.get("chunk_length", 64)) != chunk:
            problems.append(
                f"layer {i}: pad_multiple must be the lcm of the chunk lengths, {chunk}"
            )
        if kind == "lsh" and opts.get("seed") is None:
            problems.append(f"layer {i}: no LSH seed (HF's hash_seed)")
        for field, option in _HF_OPTIONS[kind].items():
            value = opts.get(option, _default(name, option))
            value = tuple(value) if isinstance(value, list) else value
            if values[kind].setdefault(field, value) != value:
                problems.append(
                    f"{kind} layers differ in {option} (ReformerConfig has one {field})"
                )
    refuse("Reformer", problems)
    fields = {
        k: (list(v) if isinstance(v, tuple) else v) for d in values.values() for k, v in d.items()
    }
    axial = config.position == "axial"
    return ReformerConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_heads,
        attention_head_size=config.head_dim,
        attn_layers=[_KINDS[name] for name, _ in specs],
        feed_forward_size=config.intermediate_size,
        hidden_act=HF_ACTIVATIONS[config.activation],
        hidden_dropout_prob=config.dropout,
        lsh_attention_probs_dropout_prob=config.attention_dropout,
        local_attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps,
        is_decoder=config.causal,
        chunk_size_feed_forward=config.feed_forward_chunk_size or 0,
        axial_pos_embds=axial,
        axial_pos_shape=list(config.axial_shape) if axial else [64, 64],
        axial_pos_embds_dim=list(config.axial_dims) if axial else [64, 192],
        max_position_embeddings=math.prod(config.axial_shape) if axial else config.max_length,
        lsh_num_chunks_before=1,
        lsh_num_chunks_after=0,
        pad_token_id=config.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=config.init_std,
        **fields,
    )


def _default(name: str, option: str) -> Any:
    return attention.options(name).get(option)


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    return weight_names(hf_model, config)


__all__ = [
    "CLASSES",
    "architecture",
    "convert",
    "hf_config",
    "layer_options",
    "model_config",
    "weight_map",
    "weight_names",
]
