"""Llama-architecture decoders: converted models give transformers' outputs.

Oracle: transformers' LlamaForCausalLM / LlamaModel built from a tiny random config with
grouped-query attention (4 query heads, 2 key/value heads), rope_theta 1e5, init 0.3 (no
download); fp32 within 1e-5 relative (to the largest output) on a right-padded batch, and
greedy generation (through longseq's own cache) token for token equal to transformers'
`generate`. (Relative: HF computes RMSNorm and the rotary angles in fp32 even in an fp64
model, so logits of size ~7 differ by ~2e-5 absolute, 3e-6 relative.)
"""

from __future__ import annotations

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq.convert import from_huggingface  # noqa: E402

TOL = 1e-5


@pytest.fixture(autouse=True)
def _quiet_and_small():
    transformers.logging.set_verbosity_error()
    torch.set_num_threads(1)


def llama_config(**changes):
    c = transformers.LlamaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
        initializer_range=0.3,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
    )
    c.rope_parameters = {"rope_type": "default", "rope_theta": 100000.0}
    for k, v in changes.items():
        setattr(c, k, v)
    return c


def hf_llama(head: str = "ForCausalLM", **changes):
    torch.manual_seed(0)
    model = getattr(transformers, "Llama" + head)(llama_config(**changes)).eval()
    with torch.no_grad():  # norms away from 1 so that their weights matter
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model


def batch(n: int = 50, lengths: tuple[int, ...] = (50, 37)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 99, (len(lengths), n), generator=g)
    mask = (torch.arange(n) < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def max_diff(hf, ours, inputs) -> float:
    """The largest difference at a real position, relative to the largest output there."""
    with torch.no_grad():
        a, b = hf(**inputs), ours(**inputs)
    real = inputs["attention_mask"].bool()
    want, got = (
        (a.logits, b.logits)
        if hasattr(a, "logits")
        else (
            a.last_hidden_state,
            b.last_hidden_state,
        )
    )
    return ((want - got)[real].abs().max() / want[real].abs().max()).item()


@pytest.mark.parametrize(
    "changes",
    [{}, {"tie_word_embeddings": False, "attention_bias": True, "mlp_bias": True}],
    ids=["tied-no-bias", "untied-biases"],
)
def test_causal_lm_logits_match_transformers(changes):
    hf = hf_llama(**changes)
    ours = from_huggingface(hf)
    cfg = ours.config
    assert (cfg.num_heads, cfg.num_key_value_heads, cfg.rotary_base) == (4, 2, 100000.0)
    assert cfg.tie_word_embeddings == (not changes)
    has_bias = any(n.endswith("bias") for n, _ in ours.named_parameters())
    assert has_bias == bool(changes)
    assert max_diff(hf, ours, batch()) < TOL
    # every weight matters: a wrong rotary base is caught
    wrong = from_huggingface(hf)
    for b in wrong.body.layers:
        b.attn.attention.rotary.inv_freq.fill_(1.0)
    assert max_diff(hf, wrong, batch()) > 1e-2


def test_base_model_hidden_states_match_transformers():
    hf = hf_llama("Model")
    ours = from_huggingface(hf)
    assert ours.config.architecture == "encoder" and ours.config.causal
    assert max_diff(hf, ours, batch()) < TOL


def test_greedy_generation_equals_transformers_generate():
    hf = hf_llama()
    hf.generation_config.eos_token_id = None  # run all the tokens
    hf.generation_config.pad_token_id = 0
    ours = from_huggingface(hf)
    prompt = batch(12, (12,))["input_ids"]
    with torch.no_grad():
        want = hf.generate(prompt, max_new_tokens=10, do_sample=False)
    got = ours.generate(prompt, 10)
    assert got.cache == "kv"
    assert torch.equal(got.sequences, want)


def test_local_folder_and_cli_convert(tmp_path):
    from longseq import cli
    from longseq.models import from_pretrained

    hf = hf_llama(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_huggingface(tmp_path / "hf")
    assert max_diff(hf, ours, batch()) < TOL
    assert cli.main(["convert", str(tmp_path / "hf"), str(tmp_path / "ls")]) == 0
    assert max_diff(hf, from_pretrained(tmp_path / "ls").eval(), batch()) < TOL


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
            "rope_type='linear' (rope scaling) is not supported",
        ),
        ({"head_dim": 16}, "head_dim=16 x num_attention_heads=4 != hidden_size=32"),
    ],
)
def test_unsupported_llama_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_huggingface(hf_llama(**changes))
