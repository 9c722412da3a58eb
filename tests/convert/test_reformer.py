"""Reformer conversion: the converted model gives Hugging Face's outputs (fp32, eval, 1e-5).

Oracle: transformers' ReformerModel / ReformerModelWithLMHead / ReformerForMaskedLM built from
small random configs (no download): local and LSH layers mixed, 1 or 2 hash rounds, int and
factorised buckets, axial and learned positions, causal or not, every weight random (LayerNorms
and biases too). Inputs: 64 tokens with a right-padded and a left-padded row, 45 tokens (HF
pads to the chunk lcm inside), 40 (padded to 48, not 40) and 6 (within one chunk).
"""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq.convert import from_huggingface  # noqa: E402
from longseq.convert.reformer import convert, model_config  # noqa: E402
from longseq.models import ModelConfig, build_model, from_pretrained  # noqa: E402

TOL = 1e-5
BASE = dict(
    vocab_size=50,
    hidden_size=32,
    num_attention_heads=2,
    attention_head_size=16,
    feed_forward_size=64,
    axial_pos_shape=(8, 8),
    axial_pos_embds_dim=(16, 16),
    max_position_embeddings=64,
    lsh_attn_chunk_length=16,
    local_attn_chunk_length=8,
    num_buckets=4,
    hash_seed=3,
    initializer_range=0.3,
)
CASES = {
    "model-local-lsh-1hash": ("ReformerModel", dict(attn_layers=["local", "lsh"])),
    "model-causal-4layers-2hashes-factorised": (
        "ReformerModel",
        dict(
            attn_layers=["lsh", "local", "lsh", "local"],
            num_hashes=2,
            num_buckets=[2, 4],
            is_decoder=True,
        ),
    ),
    "lm-local-lsh-2hashes-chunked": (
        "ReformerModelWithLMHead",
        dict(
            attn_layers=["local", "lsh"],
            num_hashes=2,
            is_decoder=True,
            chunk_size_feed_forward=2,  # HF needs every length a multiple of it (6, 48, 64)
        ),
    ),
    "lm-lsh-learned-positions": (
        "ReformerModelWithLMHead",
        dict(
            attn_layers=["lsh", "lsh", "lsh"], num_hashes=2, is_decoder=True, axial_pos_embds=False
        ),
    ),
    "model-local-look-ahead-gelu": (
        "ReformerModel",
        dict(
            attn_layers=["local", "local"],
            local_num_chunks_before=1,
            local_num_chunks_after=1,
            local_attn_chunk_length=16,
            hidden_act="gelu",
            axial_pos_embds=False,
        ),
    ),
    "masked-lm-2hashes": (
        "ReformerForMaskedLM",
        dict(attn_layers=["local", "lsh"], num_hashes=2, lsh_attn_chunk_length=8),
    ),
}


@pytest.fixture(autouse=True)
def _quiet_and_small():
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)  # tiny models: a second thread only spins on a busy machine


def hf_model(case: str, **changes):
    cls, fields = CASES[case]
    config = transformers.ReformerConfig(**{**BASE, **fields, **changes})
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():  # LayerNorms and biases away from 1 / 0, so that every weight counts
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model


def batch(n: int, vocab: int = 50) -> dict[str, torch.Tensor]:
    """Row 0 full, row 1 right-padded, row 2 left-padded (when n allows)."""
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(1, vocab, (3, n), generator=g)
    mask = torch.ones(3, n, dtype=torch.long)
    mask[1, (3 * n) // 4 :] = 0
    mask[2, : n // 8] = 0
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def max_diff(hf, ours, inputs: dict[str, torch.Tensor]) -> float:
    with torch.no_grad(), torch.random.fork_rng():  # HF reseeds the global generator
        a = hf(**inputs)
    with torch.no_grad():
        b = ours(**inputs)
    real = inputs["attention_mask"].bool()
    if type(hf).__name__ == "ReformerModel":
        return (a.last_hidden_state - b.last_hidden_state)[real].abs().max().item()
    return (a.logits - b.logits)[real].abs().max().item()


@pytest.mark.parametrize("case", list(CASES))
def test_matches_hugging_face(case):
    hf = hf_model(case)
    ours = convert(hf)
    for n in (64, 45, 40, 6):
        assert max_diff(hf, ours, batch(n)) <= TOL, f"n={n}"


def test_config_is_reformers_structure():
    cfg = model_config(hf_model("model-causal-4layers-2hashes-factorised"))
    assert (cfg.reversible, cfg.reversible_output, cfg.norm) == (True, "concat", "pre")
    assert (cfg.position, cfg.axial_shape, cfg.axial_dims) == ("axial", [8, 8], [16, 16])
    assert cfg.causal and cfg.architecture == "encoder" and not cfg.bias
    assert [spec["attention"] for spec in cfg.layer_attention] == ["lsh-hf", "local-hf"] * 2
    assert cfg.layer_attention[0] == {
        "attention": "lsh-hf",
        "num_buckets": [2, 4],
        "n_hashes": 2,
        "chunk_length": 16,
        "seed": 3,
    }
    assert cfg.layer_attention[1] == {
        "attention": "local-hf",
        "chunk_length": 8,
        "num_chunks_before": 1,
        "num_chunks_after": 0,
        "pad_multiple": 16,  # HF pads to lcm(16, 8)
    }
    lm = model_config(hf_model("lm-local-lsh-2hashes-chunked"))
    assert lm.architecture == "causal-lm" and not lm.tie_word_embeddings
    assert lm.feed_forward_chunk_size == 2 and lm.output_size == 64


def test_the_parity_test_can_fail():
    """longseq's core layers (no wrap-around) are another model: the tests would see it."""
    hf = hf_model("model-local-lsh-1hash")
    ours = convert(hf)
    layers = [
        {
            **{k: v for k, v in spec.items() if k != "pad_multiple"},
            "attention": spec["attention"].removesuffix("-hf"),
        }
        for spec in ours.config.layer_attention
    ]
    plain = build_model(ours.config.replace(layer_attention=layers)).eval()
    plain.load_state_dict(ours.state_dict())
    assert max_diff(hf, plain, batch(64)) > 1e-3


def test_save_load_and_registry(tmp_path):
    hf = hf_model("lm-local-lsh-2hashes-chunked")
    ours = from_huggingface(hf)  # through longseq.convert's registry
    ours.save_pretrained(tmp_path / "ours")
    again = from_pretrained(tmp_path / "ours")
    assert again.config == ours.config
    inputs = batch(45)
    with torch.no_grad():
        assert torch.equal(ours(**inputs).logits, again(**inputs).logits)
    hf.save_pretrained(tmp_path / "hf")
    from_folder = from_huggingface(tmp_path / "hf")
    assert max_diff(hf, from_folder, inputs) <= TOL


def test_hash_seed_none_warns_and_uses_seed_0():
    hf = hf_model("model-local-lsh-1hash", hash_seed=None)
    with pytest.warns(UserWarning, match="hash_seed is None"):
        cfg = model_config(hf)
    assert cfg.layer_attention[1]["seed"] == 0


def test_num_buckets_set_on_first_call_is_used():
    """HF chooses num_buckets on its first call (None before): convert after it, not before."""
    hf = hf_model("model-local-lsh-1hash", num_buckets=None)
    with pytest.raises(ValueError, match="num_buckets is None: Hugging Face picks it"):
        convert(hf)
    inputs = batch(64)
    with warnings.catch_warnings(), torch.no_grad(), torch.random.fork_rng():
        warnings.simplefilter("ignore")
        hf(**inputs)  # sets num_buckets = 2 * 64 / 16 = 8
    ours = convert(hf)
    assert ours.config.layer_attention[1]["num_buckets"] == 8
    assert max_diff(hf, ours, inputs) <= TOL


@pytest.mark.parametrize(
    ("cls", "changes", "match"),
    [
        ("ReformerModel", {"lsh_num_chunks_after": 1}, "looks back exactly one chunk"),
        ("ReformerModel", {"attention_head_size": 8}, "attention_head_size \\* num_attention"),
        ("ReformerModel", {"hidden_act": "tanh"}, "hidden_act 'tanh' has no longseq"),
        ("ReformerForSequenceClassification", {}, "supported: ReformerModel, "),
    ],
)
def test_unsupported_configs_are_refused(cls, changes, match):
    config = transformers.ReformerConfig(**{**BASE, "attn_layers": ["local", "lsh"], **changes})
    hf = getattr(transformers, cls)(config).eval()
    with pytest.raises(ValueError, match=match):
        convert(hf)


def test_weights_that_do_not_match_the_config_are_refused():
    hf = hf_model("model-local-lsh-1hash")
    emb = hf.embeddings.word_embeddings
    emb.weight = torch.nn.Parameter(torch.zeros(51, 32))  # config says vocab_size=50
    with pytest.raises(ValueError, match=r"word_embeddings.weight: weights \(51, 32\)"):
        convert(hf)


def test_longseq_config_round_trips_the_options():
    cfg = model_config(hf_model("model-causal-4layers-2hashes-factorised"))
    assert ModelConfig.from_json(cfg.to_json()) == cfg
