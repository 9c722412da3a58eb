"""Llama-architecture decoders (Llama 2/3, SmolLM2, TinyLlama, ...) -> longseq.

A Llama block is pre-norm with RMSNorm, grouped-query attention with rotary positions and a
gated (SwiGLU) feed-forward, no biases:

    x = x + o_proj(attn(rope(q_proj(rms1(x))), rope(k_proj(rms1(x))), v_proj(rms1(x))))
    x = x + down_proj(silu(gate_proj(rms2(x))) * up_proj(rms2(x)))
    logits = lm_head(rms_final(x))        (lm_head tied to embed_tokens or not)

which is a longseq causal LM with norm_type="rms", feed_forward="gated", position="rotary"
(rotary_base = rope_theta: both rotate half, theta_j = base^(-2j/D)), num_key_value_heads,
bias / feed_forward_bias from attention_bias / mlp_bias, and no output bias.

Heads: `LlamaForCausalLM` (causal-lm) and `LlamaModel` (an encoder with causal attention).
Refused, naming the setting: rope scaling (rope_type other than "default"), a head_dim other
than hidden_size / num_attention_heads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from longseq.convert.common import HF_ACTIVATIONS, activation, lm_tied, load_mapped, refuse
from longseq.models import LongseqModel, ModelConfig, build_model


def rope_theta(c: Any) -> float:
    """The rotary base of an HF Llama config (transformers 5: rope_parameters; 4: rope_theta
    and rope_scaling), refusing rope scaling, which longseq's rotary does not implement."""
    params = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise ValueError(
            f"{c.model_type}: rope_type={kind!r} (rope scaling) is not supported; longseq's "
            "rotary positions are the default rope (rope_type 'default')"
        )
    return float(params.get("rope_theta", getattr(c, "rope_theta", 10000.0)))


def llama_config(hf_model: nn.Module, architecture: str) -> ModelConfig:
    c = hf_model.config
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    if head_dim * heads != c.hidden_size:
        raise ValueError(
            f"{c.model_type}: head_dim={head_dim} x num_attention_heads={heads} != hidden_size="
            f"{c.hidden_size}; longseq's heads split hidden_size (head_dim = hidden / heads)"
        )
    pad = c.pad_token_id if c.pad_token_id is not None else 0
    bos = getattr(c, "bos_token_id", None)
    values: dict[str, Any] = {
        "architecture": architecture,
        "causal_attention": True,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_layers": c.num_hidden_layers,
        "num_heads": heads,
        "num_key_value_heads": getattr(c, "num_key_value_heads", None) or heads,
        "intermediate_size": c.intermediate_size,
        "max_length": c.max_position_embeddings,
        "position": "rotary",
        "rotary_base": rope_theta(c),
        "norm": "pre",
        "norm_type": "rms",
        "layer_norm_eps": c.rms_norm_eps,
        "activation": activation(c.hidden_act),
        "feed_forward": "gated",
        "bias": bool(getattr(c, "attention_bias", False)),
        "feed_forward_bias": bool(getattr(c, "mlp_bias", False)),
        "output_bias": False,
        "dropout": 0.0,
        "attention_dropout": float(getattr(c, "attention_dropout", 0.0) or 0.0),
        "pad_token_id": pad if 0 <= pad < c.vocab_size else 0,
        "tie_word_embeddings": lm_tied(hf_model),
        "init_std": c.initializer_range,
    }
    if bos is not None and 0 <= bos < c.vocab_size:
        values["cls_token_id"] = bos
    return ModelConfig(**values)


def _weights(names: dict[str, str], ours: str, theirs: str, bias: bool) -> None:
    names[f"{ours}.weight"] = f"{theirs}.weight"
    if bias:
        names[f"{ours}.bias"] = f"{theirs}.bias"


def llama_names(config: ModelConfig, prefix: str) -> dict[str, str]:
    """longseq name -> HF name for a Llama body under `prefix` ("model." under the LM head)."""
    names = {
        "body.embeddings.word.weight": f"{prefix}embed_tokens.weight",
        "body.final_norm.weight": f"{prefix}norm.weight",
    }
    for i in range(config.num_layers):
        ours, theirs = f"body.layers.{i}", f"{prefix}layers.{i}"
        for mine, hf in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
            _weights(
                names, f"{ours}.attn.attention.{mine}", f"{theirs}.self_attn.{hf}_proj", config.bias
            )
        for mine, hf in (("gate", "gate"), ("fc1", "up"), ("fc2", "down")):
            _weights(
                names,
                f"{ours}.ff.feed_forward.{mine}",
                f"{theirs}.mlp.{hf}_proj",
                config.feed_forward_bias,
            )
        names[f"{ours}.attn.norm.weight"] = f"{theirs}.input_layernorm.weight"
        names[f"{ours}.ff.norm.weight"] = f"{theirs}.post_attention_layernorm.weight"
    return names


def convert(hf_model: nn.Module) -> LongseqModel:
    name = type(hf_model).__name__
    if getattr(hf_model, "base_model", None) is hf_model:
        architecture = "encoder"
    elif name.endswith("ForCausalLM"):
        architecture = "causal-lm"
    else:
        raise ValueError(
            f"{name}: this head is not supported; supported classes: LlamaModel, LlamaForCausalLM"
        )
    config = llama_config(hf_model, architecture)
    names, unused = weight_map(hf_model, config)
    model = build_model(config, seed=0)
    return load_mapped(model, hf_model.state_dict(), names, unused, name)


def weight_map(hf_model: nn.Module, config: ModelConfig) -> tuple[dict[str, str], list[str]]:
    """(longseq name -> HF name, HF names unused on purpose): what convert and export read."""
    prefix = "" if config.architecture == "encoder" else f"{hf_model.base_model_prefix}."
    names = llama_names(config, prefix)
    unused = []
    if config.architecture == "causal-lm":
        if config.tie_word_embeddings:
            unused.append("lm_head.weight")  # the word embeddings
        else:
            names["lm_head.decoder.weight"] = "lm_head.weight"
    return names, unused


# ----------------------------------------------------------------------- export (to_hf.py)
def hf_class_name(config: ModelConfig) -> str:
    return "LlamaModel" if config.architecture == "encoder" else "LlamaForCausalLM"


def hf_position_offset(config: ModelConfig) -> None:
    return None  # rotary: no table


def hf_config(config: ModelConfig) -> Any:
    """The inverse of `llama_config`, refusing what a Llama cannot be."""
    from transformers import LlamaConfig

    want = {
        "causal": True,
        "position": "rotary",
        "norm": "pre",
        "norm_type": "rms",
        "feed_forward": "gated",
        "embedding_norm": False,
        "type_vocab_size": 0,
        "output_bias": False,
        "reversible": False,
    }
    problems = [
        f"{k}={getattr(config, k)!r} (needs {v!r})"
        for k, v in want.items()
        if getattr(config, k) != v
    ]
    if config.architecture not in ("encoder", "causal-lm"):
        problems.append(f"architecture {config.architecture!r} (Llama: encoder, causal-lm)")
    refuse("Llama", problems)
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_length,
        rms_norm_eps=config.layer_norm_eps,
        hidden_act=HF_ACTIVATIONS[config.activation],
        rope_parameters={"rope_type": "default", "rope_theta": config.rotary_base},
        attention_bias=config.bias,
        mlp_bias=config.feed_forward_bias,
        attention_dropout=config.attention_dropout,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.cls_token_id,
        initializer_range=config.init_std,
    )
