"""Llama-family model options: RMSNorm, the gated (SwiGLU) feed-forward, Llama's rotary
convention, no biases, tied or untied output embeddings.

Oracles: transformers' own Llama modules (LlamaRMSNorm, LlamaMLP, LlamaRotaryEmbedding with
apply_rotary_pos_emb) with the same weights, in fp64.
"""

from __future__ import annotations

import pytest
import torch

from longseq.layers import FeedForward, RotaryEmbedding, build_norm
from longseq.models import ModelConfig, build_model

llama = pytest.importorskip("transformers.models.llama.modeling_llama")
LlamaConfig = pytest.importorskip("transformers").LlamaConfig

LLAMA = dict(
    norm_type="rms",
    feed_forward="gated",
    activation="silu",
    bias=False,
    feed_forward_bias=False,
    output_bias=False,
    position="rotary",
    rotary_base=100000.0,
)


def test_rms_norm_equals_llama():
    """(LlamaRMSNorm computes in fp32 whatever its input: compared in fp32.)"""
    norm = build_norm("rms", 24, 1e-6)
    ref = llama.LlamaRMSNorm(24, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
        ref.weight.copy_(norm.weight)
    x = torch.randn(3, 5, 24) * 3 + 1
    torch.testing.assert_close(norm(x), ref(x), rtol=1e-6, atol=1e-6)
    x, w = x.double(), norm.weight.double()
    want = x * w / (x.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(norm.double()(x), want, rtol=1e-12, atol=1e-12)
    assert not any(n.endswith("bias") for n, _ in norm.named_parameters())


def test_gated_feed_forward_equals_llama_mlp():
    ff = FeedForward(24, 40, "silu", 0.0, bias=False, gated=True).double()
    cfg = LlamaConfig(
        hidden_size=24, intermediate_size=40, hidden_act="silu", num_attention_heads=4
    )
    ref = llama.LlamaMLP(cfg).double()
    with torch.no_grad():
        for p in ff.parameters():
            p.normal_()
        ref.gate_proj.weight.copy_(ff.gate.weight)
        ref.up_proj.weight.copy_(ff.fc1.weight)
        ref.down_proj.weight.copy_(ff.fc2.weight)
    x = torch.randn(2, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(ff(x), ref(x), rtol=1e-12, atol=1e-12)
    # chunked along the sequence: the same numbers
    ff.chunk_size = 3
    torch.testing.assert_close(ff(x), ref(x), rtol=1e-12, atol=1e-12)


def test_rotary_base_is_llamas_rope_theta():
    """rotate-half pairing (j, j + D/2) and theta_j = rope_theta^(-2j/D), at far positions."""
    d, theta = 16, 100000.0
    cfg = LlamaConfig(hidden_size=4 * d, num_attention_heads=4, rope_theta=theta)
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": theta}
    ref = llama.LlamaRotaryEmbedding(cfg)
    q = torch.randn(2, 4, 6, d, dtype=torch.float64)
    k = torch.randn(2, 4, 6, d, dtype=torch.float64)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [7000, 7001, 7002, 8000, 8001, 8191]])
    cos, sin = ref(q.float(), pos)
    want_q, want_k = llama.apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    got_q, got_k = RotaryEmbedding(d, theta)(q, k, positions=pos)
    # HF computes the angles in fp32: 1e-4 relative at position 8191
    torch.testing.assert_close(got_q, want_q, rtol=0, atol=2e-3)
    torch.testing.assert_close(got_k, want_k, rtol=0, atol=2e-3)
    near_q, _ = RotaryEmbedding(d, theta)(q[:1], k[:1], positions=pos[:1])
    torch.testing.assert_close(near_q, want_q[:1], rtol=0, atol=1e-6)
    wrong_q, _ = RotaryEmbedding(d, 10000.0)(q, k, positions=pos)
    assert (wrong_q - want_q).abs().max() > 0.1  # the base matters: the test can fail


def _lm(**kw):
    cfg = dict(
        architecture="causal-lm",
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=48,
        max_length=64,
        dropout=0.0,
    )
    return build_model(ModelConfig(**{**cfg, **LLAMA, **kw}), seed=0).eval()


def test_llama_options_create_no_bias_and_rms_norms():
    model = _lm()
    names = [n for n, _ in model.named_parameters()]
    assert not [n for n in names if n.endswith("bias")], names
    norms = [m for m in model.modules() if isinstance(m, torch.nn.RMSNorm)]
    assert len(norms) == 2 * 2 + 1  # two per block and the final one
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert all(b.ff.feed_forward.gate is not None for b in model.body.layers)
    # the defaults keep today's model: biases, LayerNorm, an ungated feed-forward
    plain = _lm(**{k: ModelConfig().to_dict()[k] for k in LLAMA})
    assert any(n.endswith("bias") for n, _ in plain.named_parameters())
    assert plain.body.layers[0].ff.feed_forward.gate is None


def test_tied_and_untied_output_embeddings(tmp_path):
    tied, untied = _lm(), _lm(tie_word_embeddings=False)
    assert tied.lm_head.decoder.weight is tied.body.embeddings.word.weight
    assert untied.lm_head.decoder.weight is not untied.body.embeddings.word.weight
    extra = sum(p.numel() for p in untied.parameters()) - sum(p.numel() for p in tied.parameters())
    assert extra == 32 * 260
    untied.save_pretrained(tmp_path / "m")
    from longseq.models import from_pretrained

    back = from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(4, 260, (2, 9))
    torch.testing.assert_close(back(ids).logits, untied(ids).logits)


@pytest.mark.parametrize("name", ["norm_type", "feed_forward"])
def test_unknown_choices_are_refused(name):
    with pytest.raises(ValueError, match=f"unknown {name} 'x'; valid"):
        ModelConfig(**{name: "x"})


def test_grouped_query_model_stores_fewer_key_value_weights():
    model = _lm(num_key_value_heads=2)
    attn = model.body.layers[0].attn.attention
    assert attn.key.weight.shape == (2 * 8, 32) and attn.value.weight.shape == (2 * 8, 32)
    assert attn.query.weight.shape == (32, 32)
    cache = model.new_cache(1)
    model(torch.randint(4, 260, (1, 5)), cache=cache)
    assert all(c.k.shape[1] == 2 for c in cache.layers)  # KV heads, never the 4 query heads


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_key_value_heads": 3}, "positive divisor of num_heads=4"),
        ({"num_key_value_heads": 0}, "positive divisor of num_heads=4"),
        ({"num_key_value_heads": "2"}, "positive divisor of num_heads=4"),
        (
            {"attention": "lsh", "num_key_value_heads": 2, "position": "none"},
            "shares one projection for queries and keys",
        ),
        (
            {"attention_options": {"num_key_value_heads": 2}},
            "set by the model config",
        ),
    ],
)
def test_grouped_query_config_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(num_heads=4, hidden_size=32, **changes)
