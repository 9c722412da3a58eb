"""Longify: turn a short pre-trained encoder or decoder into a long one (the Longformer recipe).

Beltagy et al. (2020) made Longformer-4096 from RoBERTa-512 by copying the position table out
to the new length and initialising the global projections from the local ones; every other
weight is kept. `longify(model, max_length, attention, **options)` does that for any longseq
model and any mechanism:

    learned positions   P'[o + p] = P[o + (p mod N0)]   for p < N, rows P[:o] kept
                        (N0 the old, N the new max_length, o = position_offset, 2 for RoBERTa)
    axial positions     E1'[i] = E1[i mod a]: axial_shape (a, b) -> (ceil(N / b), b), which is
                        the same tiling, P'[p] = P[p mod ab]
    rotary, none        nothing to copy: rotary has no table, it rotates q and k by any
                        position, so `full` longified only raises max_length (positions past
                        N0 get angles the model was never trained on)
    Longformer globals  query_global, key_global, value_global = query, key, value
    Linformer E, F      a Linformer source's columns tiled like the positions; otherwise the
                        "identity fold" E[r, j] = F[r, j] = 1 if j mod k == r else 0
    LSH (shared QK)     the shared projection is the source's query projection (its key is
                        dropped); a shared-QK source's query becomes every other key projection
    BigBird ETC         its extra global states are new (random N(0, 0.02))

A decoder (a causal LM, e.g. a converted Llama) gets each mechanism's causal form; the
weights above are all it has, trained with dense causal attention:

    longformer          a causal band of w/2 + 1 keys; `global_tokens=G` adds the first G
                        positions as attention sinks (StreamingLLM), scored with the ordinary
                        q, k, v: the dense model under the mask causal & (band | j < G)
    local               the causal chunks in reach (chunk_length, num_chunks_before)
    bigbird             causal: its first num_global_blocks blocks are sinks (whole blocks),
                        plus the window blocks and random blocks from before the window
    lsh                 one shared query-key projection (the source's query): an approximation
                        of q . k (its keys are unit-normalised queries), never exact; rotary
                        rotates the shared vector; grouped-query values are repeated for every
                        query head (LSH has no grouped heads: exact for the values)

What is exact (eval mode; `exact_lengths` computes it for two configs). For an input of n <=
N0 tokens the embeddings are unchanged, so the longified model equals the source wherever
every layer computes the same attention as before:

- same mechanism, same pattern options (e.g. a Longformer made longer): every n <= N0;
- a dense source layer (full, or a sparse one whose pattern covers the input) and a target
  layer whose pattern covers the input (each mechanism's `dense_up_to`): Longformer with
  dilation 1 and n <= window/2 + 1 (global tokens included: their projections are copies;
  causal sinks use the ordinary ones), local attention while its chunks in reach cover the
  input, BigBird ITC while its layout covers every block (there is no dense fallback: the
  layout itself must cover; ETC never, its new global states are extra keys);
- Linformer from a dense source: only at n = k (E[:, :k] = I). For n < k the k - n empty
  projected keys score 0 with value 0, so every output is the dense one scaled by
  Z / (Z + k - n), Z the row's sum of exp(scores); for n > k keys are summed in groups;
- LSH scores shared-QK attention (keys = unit-normalised queries, self masked), which a model
  trained with separate Q and K never computed: never exact from such a source. From a
  shared-QK (LSH) source, exact while the input fits in one chunk (n <= chunk_length).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from longseq import attention
from longseq.convert.converters import from_huggingface
from longseq.models import ModelConfig, build_model, from_pretrained, read_config
from longseq.models.base import LongseqModel

_GLOBAL = {"query_global": "query", "key_global": "key", "value_global": "value"}


# ------------------------------------------------------------------------------- source
def load_source(model_or_dir: Any) -> LongseqModel:
    """A longseq model from a model, a longseq folder, or a Hugging Face model or folder."""
    if isinstance(model_or_dir, LongseqModel):
        return model_or_dir
    if isinstance(model_or_dir, nn.Module) and hasattr(
        getattr(model_or_dir, "config", None), "model_type"
    ):
        return from_huggingface(model_or_dir)
    if not isinstance(model_or_dir, (str, Path)):
        raise ValueError(
            f"longify takes a longseq model, a Hugging Face model, or a folder holding either; "
            f"got {type(model_or_dir).__name__}"
        )
    d = Path(model_or_dir)
    if not (d / "config.json").is_file():
        raise FileNotFoundError(
            f"no config.json in {d}: pass a folder written by longseq's save_pretrained or a "
            "Hugging Face model folder"
        )
    if "model_type" in read_config(d):  # Hugging Face configs name their family
        return from_huggingface(d)
    return from_pretrained(d)


# ------------------------------------------------------------------------------- config
def longified_config(
    source: ModelConfig,
    max_length: int,
    attention_name: str,
    options: dict[str, Any],
    global_tokens: int | None = None,
) -> ModelConfig:
    """The source config with the new max_length and mechanism for every layer.

    A layer whose source mechanism is the target keeps its options (per-layer ones included),
    except those that size it for the old length; `options` override them in every layer.
    `global_tokens` sets `ModelConfig.global_tokens` (None: the source's, where the target
    mechanism has global tokens, else 0).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise ValueError(f"max_length must be an int, got {max_length!r}")
    if max_length < source.max_length:
        raise ValueError(
            f"max_length={max_length} is shorter than the source model's max_length="
            f"{source.max_length}; longify only extends (truncate inputs to use a shorter one)"
        )
    if attention_name not in attention.mechanisms():
        raise ValueError(
            f"unknown attention {attention_name!r}; valid: {', '.join(attention.mechanisms())}"
        )
    target = attention.get(attention_name)
    per_layer = []
    for i in range(source.num_layers):
        name, opts = source.layer_spec(i)
        kept = {
            k: v
            for k, v in opts.items()
            if name == attention_name and k not in attention.get(name).length_options
        }
        # the mechanism's own defaults for a longified layer (Linformer: k = N0)
        per_layer.append(
            target.longified_options({**kept, **options}, source.max_length, max_length)
        )
    same = all(o == per_layer[0] for o in per_layer)
    if target.shared_qk and source.grouped:  # its keys are its queries: every head its own
        changes_kv: dict[str, Any] = {"num_key_value_heads": None}
    else:
        changes_kv = {}
    if global_tokens is None:
        takes = "global_tokens" in attention.options(attention_name)
        global_tokens = source.global_tokens if takes else 0
    changes: dict[str, Any] = {
        "global_tokens": global_tokens,
        "max_length": max_length,
        "attention": attention_name,
        "attention_options": per_layer[0] if same else {},
        "layer_attention": None if same else per_layer,
        **changes_kv,
    }
    if source.position == "axial":
        assert source.axial_shape is not None
        b = source.axial_shape[1]
        changes["axial_shape"] = [max(source.axial_shape[0], math.ceil(max_length / b)), b]
    # validates the options: unknown names (listing the valid ones), model-owned ones, causal
    return source.replace(**changes)


# ------------------------------------------------------------------------------- weights
def tile_rows(table: Tensor, rows: int, keep: int = 0, dim: int = 0) -> Tensor:
    """`table` extended to `rows` along `dim`: the first `keep` kept, the rest repeated."""
    head, body = table.narrow(dim, 0, keep), table.narrow(dim, keep, table.shape[dim] - keep)
    reps = math.ceil((rows - keep) / body.shape[dim])
    shape = [1] * table.dim()
    shape[dim] = reps
    return torch.cat((head, body.repeat(*shape).narrow(dim, 0, rows - keep)), dim)


def identity_fold(shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """(..., k, L) Linformer projection with M[r, j] = 1 if j mod k == r: E K = K at n = k."""
    k, length = shape[-2], shape[-1]
    eye = (torch.arange(length)[None, :] % k == torch.arange(k)[:, None]).to(dtype)
    return eye.expand(shape).clone()


def transfer(source: LongseqModel, target: LongseqModel) -> dict[str, list[str]]:
    """Load `source`'s weights into the longer `target` by the rules of the module doc.

    Returns which target weights were copied, extended, derived from another projection or
    newly initialised, and which source weights were dropped.
    """
    src = source.state_dict()
    cfg = source.config
    new: dict[str, Tensor] = {}
    report: dict[str, list[str]] = {
        "copied": [],
        "extended": [],
        "derived": [],
        "initialised": [],
        "dropped": [],
    }
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return src[key]

    for name, param in target.state_dict().items():
        stem, _, leaf = name.rpartition(".")
        parent, _, module = stem.rpartition(".")
        if name in src and src[name].shape == param.shape:
            new[name], kind = take(name), "copied"
        elif module == "value" and name in src and param.shape[0] > src[name].shape[0]:
            # grouped-query values for a mechanism without grouped heads (LSH): each key/value
            # head repeated for the query heads it served (exact: the same values)
            groups = param.shape[0] // src[name].shape[0]
            w = take(name).unflatten(0, (-1, cfg.head_dim))
            new[name], kind = w.repeat_interleave(groups, 0).flatten(0, 1), "extended"
        elif name.endswith("embeddings.position.weight") and name in src:
            new[name], kind = tile_rows(take(name), param.shape[0], cfg.position_offset), "extended"
        elif name.endswith("embeddings.position.weight1") and name in src:
            new[name], kind = tile_rows(take(name), param.shape[0]), "extended"
        elif module in _GLOBAL or (module == "key" and f"{stem}.{leaf}" not in src):
            local = f"{parent}.{_GLOBAL.get(module, module)}.{leaf}"
            if local not in src:  # a shared-QK source: its query is also its key
                local = f"{parent}.query.{leaf}"
            new[name], kind = take(local), "derived"
        elif module == "projection" and leaf in ("e", "f"):
            # a Linformer source's own matrix (F may be shared with E) of the same k and heads
            cands = [name, f"{stem}.e"]
            old = next(
                (c for c in cands if c in src and src[c].shape[:-1] == param.shape[:-1]), None
            )
            if old is None:
                new[name], kind = identity_fold(param.shape, param.dtype), "initialised"
            else:
                new[name], kind = tile_rows(take(old), param.shape[-1], dim=-1), "extended"
        elif leaf == "global_states":
            new[name], kind = param, "initialised"  # BigBird ETC: no counterpart in the source
        else:
            raise ValueError(
                f"cannot longify weight {name} {tuple(param.shape)}: the source has "
                + (f"shape {tuple(src[name].shape)}" if name in src else "no such weight")
            )
        report[kind].append(name)
    report["dropped"] = sorted(set(src) - used)
    target.load_state_dict({k: v.to(target.state_dict()[k].dtype) for k, v in new.items()})
    return report


def longify(
    model_or_dir: Any,
    max_length: int,
    attention: str,
    *,
    global_tokens: int | None = None,
    **options: Any,
) -> LongseqModel:
    """A copy of a short encoder or decoder that takes `max_length` tokens with `attention`
    layers (causal layers for a causal model).

    `model_or_dir`: a longseq model, a folder saved by longseq, or a Hugging Face model or
    folder (converted by `longseq.convert.from_huggingface`). `options` are the mechanism's
    (`longseq.attention.options(attention)`), e.g. `window=512` or `block_size=64`.
    `global_tokens=G` makes the first G positions global in every layer whose mechanism has
    global tokens (a decoder's attention sinks; `ModelConfig.global_tokens`). The head,
    tokens and every other setting are the source's. Returned in eval mode; the source is not
    changed. See the module docstring for which inputs give exactly the source's outputs.
    """
    return longify_with_report(
        model_or_dir, max_length, attention, global_tokens=global_tokens, **options
    )[0]


def longify_with_report(
    model_or_dir: Any,
    max_length: int,
    attention: str,
    *,
    global_tokens: int | None = None,
    **options: Any,
) -> tuple[LongseqModel, dict[str, list[str]]]:
    """`longify`, plus `transfer`'s account of where each weight came from."""
    source = load_source(model_or_dir)
    config = longified_config(source.config, max_length, attention, options, global_tokens)
    p = next(source.parameters())
    target = build_model(config, seed=0).to(device=p.device, dtype=p.dtype)
    report = transfer(source, target)
    return target.eval(), report


# ------------------------------------------------------------------------------- exactness
def _pattern_options(name: str, opts: dict[str, Any]) -> dict[str, Any]:
    """A layer's options with defaults filled in, less those that only size it."""
    full = {**attention.options(name), **opts}
    for key in ("causal", "dropout", "bias", "projection", *attention.get(name).length_options):
        full.pop(key, None)
    return full


def dense_up_to(name: str, opts: dict[str, Any], num_heads: int, causal: bool, limit: int) -> int:
    """Largest n <= limit for which the layer's pattern is full attention (causal: lower
    triangle) for every head; 0 when no n is (Linformer, LSH, BigBird ETC): the mechanism's
    own `dense_up_to`, asked of a tiny layer with these options."""
    return attention.build(name, num_heads, num_heads, causal=causal, **opts).dense_up_to(limit)


def _global(name: str) -> bool:
    return attention.get(name).supports_global


def _shared_qk(name: str) -> bool:
    return attention.get(name).shared_qk


def _bucket_causal(name: str) -> bool:
    """Causal LSH's prefix-stable rule: a query sees the latest tokens of its own bucket."""
    return getattr(attention.get(name), "bucket_window_causal", False)


def _built_spec(config: ModelConfig, i: int) -> tuple[str, dict[str, Any]]:
    name, opts = config.layer_spec(i)
    cls = attention.get(name)
    opts = cls.options_at(attention.At(config.max_length, layer=i, causal=config.causal), opts)
    if config.global_tokens and "global_tokens" in attention.options(name):
        opts = {**opts, "global_tokens": config.global_tokens}  # part of the pattern
    return name, opts


def exact_lengths(source: ModelConfig, target: ModelConfig) -> list[int]:
    """Input lengths n <= source.max_length at which `longify`'s result equals the source (eval
    mode, up to rounding), layer by layer as the module docstring lists; conservative: a
    length left out may still happen to match."""
    n0 = source.max_length
    lengths = set(range(1, n0 + 1))
    heads, causal = source.num_heads, source.causal
    for i in range(source.num_layers):
        # the options the layers are built with (what each model derives: LSH's buckets)
        s, so = _built_spec(source, i)
        t, to = _built_spec(target, i)
        if s == t and _pattern_options(s, so) == _pattern_options(t, to):
            ok = lengths  # the same pattern on the same weights
        elif _shared_qk(s) and _shared_qk(t):
            # within one chunk: plain shared-QK attention, unless causal under the per-bucket
            # window (it depends on the buckets); then only a lone token (its own value)
            chunks = (_pattern_options(x, o)["chunk_length"] for x, o in ((s, so), (t, to)))
            bucketed = causal and (_bucket_causal(s) or _bucket_causal(t))
            ok = {1} if bucketed else set(range(1, min(n0, *chunks) + 1))
        elif _shared_qk(s) or _shared_qk(t):  # vs separate QK: equal only for a lone token
            other, opts = (t, to) if _shared_qk(s) else (s, so)
            ok = {1} if dense_up_to(other, opts, heads, causal, n0) else set()
        elif _global(s) and not _global(t) and not causal:
            ok = set()  # its trained global projections would be lost (causal: never used)
        elif t == "linformer":
            k = _pattern_options(t, to)["k"]
            ok = {k} if s != "linformer" and k <= dense_up_to(s, so, heads, causal, n0) else set()
        else:
            up = min(dense_up_to(s, so, heads, causal, n0), dense_up_to(t, to, heads, causal, n0))
            ok = set(range(1, up + 1))
        lengths &= ok
    return sorted(lengths)


def describe_lengths(lengths: list[int]) -> str:
    """[1, 2, 3, 7] -> '1..3, 7'; [] -> 'none'."""
    if not lengths:
        return "none"
    runs, start = [], lengths[0]
    for a, b in zip(lengths, [*lengths[1:], None], strict=True):
        if b != a + 1:
            runs.append(f"{start}..{a}" if a > start else str(a))
            start = b
    return ", ".join(runs)


__all__ = [
    "dense_up_to",
    "describe_lengths",
    "exact_lengths",
    "identity_fold",
    "load_source",
    "longified_config",
    "longify",
    "longify_with_report",
    "tile_rows",
    "transfer",
]
