"""Generation: cached decoding == the model's full forward, sampling sets, stops, streaming, CLI.

The oracle for the caches is the model's own forward (the attention kernels) on each whole
prefix: the cached next-token logits must equal it at every step (fp64), with ring caches
smaller than the sequence so that they really roll, prompts fed in chunks longer than a ring.
"""

from __future__ import annotations

import io

import pytest
import torch

from longseq import attention
from longseq.cli import main
from longseq.data.tokenizers import ByteTokenizer
from longseq.models import ModelConfig, build_model
from longseq.models.generation import (
    IncrementalText,
    TextStreamer,
    cache_kind,
    filter_logits,
    generate,
    position_limit,
    sample_next,
)

LF = {"attention": "longformer", "attention_options": {"window": 4}}  # 3 slots
AXIAL = {"position": "axial", "axial_shape": [8, 16], "axial_dims": [16, 16]}
LSH = {"attention": "lsh", "attention_options": {"chunk_length": 4, "num_buckets": 4}, **AXIAL}
BIGBIRD = {
    "attention": "bigbird",
    "attention_options": {"block_size": 2, "num_random_blocks": 2, "num_global_blocks": 1},
}


def lm(dtype: torch.dtype = torch.float64, **kw) -> torch.nn.Module:
    base = dict(
        architecture="causal-lm",
        hidden_size=32,
        num_heads=4,
        num_layers=2,
        intermediate_size=64,
        max_length=128,
        dropout=0.0,
        init_std=0.3,  # large weights: logits depend strongly on the context
    )
    base.update(kw)
    return build_model(ModelConfig(**base), seed=0).to(dtype).eval()


LLAMA = {  # Llama's block: RMSNorm, SwiGLU, no biases, rotary (theta 1e5), untied output, GQA
    "num_key_value_heads": 2,
    "norm_type": "rms",
    "feed_forward": "gated",
    "activation": "silu",
    "bias": False,
    "feed_forward_bias": False,
    "output_bias": False,
    "position": "rotary",
    "rotary_base": 100000.0,
    "tie_word_embeddings": False,
}

CASES = {
    "full-learned-pre": {},
    "full-llama": LLAMA,
    "longformer-llama": {**LLAMA, **LF},
    "longformer-llama-sinks": {**LLAMA, **LF, "global_tokens": 2},  # the ring keeps the sinks
    "longformer-llama-sinks-cache": {  # sinks scored at cache positions (StreamingLLM)
        **LLAMA,
        "attention": "longformer",
        "attention_options": {"window": 4, "sink_positions": "cache"},
        "global_tokens": 2,
    },
    "longformer-local-sinks": {  # global_tokens reaches the Longformer layer only
        "global_tokens": 3,
        "layer_attention": [
            {"attention": "longformer", "window": 2},
            {"attention": "local", "chunk_length": 3},
        ],
    },
    "local-llama": {**LLAMA, "attention": "local", "attention_options": {"chunk_length": 3}},
    "bigbird-llama": {**LLAMA, **BIGBIRD, "num_key_value_heads": 1},
    "full-rotary-post": {"position": "rotary", "norm": "post"},
    "full-axial-reversible-mean": {
        **AXIAL,
        "embedding_norm": True,
        "type_vocab_size": 2,
        "feed_forward_chunk_size": 3,
        "reversible": True,
    },
    "longformer-learned-offset-pre": {**LF, "position_offset": 2},
    "longformer-rotary-post": {**LF, "position": "rotary", "norm": "post"},
    "longformer-dilated-rotary": {
        "attention": "longformer",
        "attention_options": {"window": 4, "dilation": [1, 2, 1, 3]},
        "position": "rotary",
    },
    "longformer-reversible-concat": {
        **LF,
        "reversible": True,
        "reversible_output": "concat",
        "tie_word_embeddings": False,
    },
    "local-rotary": {
        "attention": "local",
        "attention_options": {"chunk_length": 3, "num_chunks_before": 2},
        "position": "rotary",
    },
    "bigbird-itc-learned": BIGBIRD,
    "bigbird-etc-rotary": {
        "attention": "bigbird",
        "attention_options": {
            "block_size": 3,
            "num_random_blocks": 1,
            "num_global_blocks": 1,
            "variant": "etc",
        },
        "position": "rotary",
    },
    "lsh-axial-3-rounds": {
        **LSH,
        "attention_options": {"chunk_length": 3, "num_buckets": 4, "n_hashes": 3},
    },
    "lsh-rotary": {  # the shared vector rotated at its position (a longified rotary decoder)
        "attention": "lsh",
        "attention_options": {"chunk_length": 4, "num_buckets": 4, "n_hashes": 2},
        "position": "rotary",
    },
    "lsh-factorised-post": {
        **LSH,
        "attention_options": {"chunk_length": 4, "num_buckets": [2, 4]},
        "norm": "post",
    },
    "reformer-reversible-local-lsh": {
        **AXIAL,
        "reversible": True,
        "reversible_output": "concat",
        "tie_word_embeddings": False,
        "layer_attention": [
            {"attention": "local", "chunk_length": 4},
            {"attention": "lsh", "chunk_length": 4, "num_buckets": 4, "n_hashes": 2},
        ],
    },
    "mixed-layers": {"layer_attention": [{"attention": "longformer", "window": 4}, {}]},
    "mixed-bigbird-lsh": {
        **AXIAL,
        "num_layers": 3,
        "layer_attention": [
            {"attention": "bigbird", "block_size": 2, "num_random_blocks": 1},
            {"attention": "lsh", "chunk_length": 2, "num_buckets": 6},
            {"attention": "longformer", "window": 2},
        ],
    },
}
KINDS = {
    "full": "kv",
    "longformer": "ring",
    "local": "ring",
    "bigbird": "kv",
    "lsh": "lsh",
    "reformer": "ring+lsh",
    "mixed-layers": "ring+kv",
    "mixed-bigbird-lsh": "kv+lsh+ring",
}


def kind_of(name: str) -> str:
    return KINDS.get(name, KINDS.get(name.split("-")[0], ""))


def cached_logits(model, ids, prompts, total, chunk):
    """(B, total - max(prompts), V)-like list: the logits after each row's prompt (fed in
    chunks of `chunk`, right-padded) and after each teacher-forced token of `ids`."""
    b = ids.shape[0]
    cache = model.new_cache(b)
    p = int(prompts.max())
    last = torch.zeros(b, model.config.vocab_size, dtype=next(model.parameters()).dtype)
    with torch.no_grad():
        for s in range(0, p, chunk):
            cols = torch.arange(s, min(s + chunk, p))
            valid = cols[None] < prompts[:, None]
            logits = model(ids[:, cols], attention_mask=valid.long(), cache=cache).logits
            for r in range(b):
                if s <= int(prompts[r]) - 1 < s + chunk:
                    last[r] = logits[r, int(prompts[r]) - 1 - s]
        out = [last]
        for t in range(total - p):
            nxt = ids[torch.arange(b), prompts + t][:, None]
            out.append(model(nxt, cache=cache).logits[:, 0])
    return out, cache


@pytest.mark.parametrize("name", list(CASES))
def test_cached_logits_equal_full_forward_on_every_prefix(name):
    """Ragged batch (prompts 5 and 13, fed in chunks of 6), teacher-forced random
    continuations; each row's cached logits == the forward of that row's prefix alone, at
    every step."""
    model = lm(**CASES[name])
    assert cache_kind(model) == kind_of(name)
    total, prompts = 30, torch.tensor([5, 13])
    seq = torch.randint(4, 260, (2, total))
    steps, cache = cached_logits(model, seq, prompts, total, chunk=6)
    with torch.no_grad():
        for t, logits in enumerate(steps):
            for b in range(2):
                n = int(prompts[b]) + t
                ref = model(seq[b : b + 1, :n]).logits[0, -1]
                torch.testing.assert_close(logits[b], ref, rtol=1e-10, atol=1e-10)
    for c in cache.layers:  # a ring rolled: fewer slots than positions seen
        assert not c.bounded or c.k.shape[2] < total - 13


def test_every_causal_mechanism_has_an_exact_cache():
    """The registry decides: a new causal mechanism must come with a cache (or fail here)."""
    causal = [m for m in attention.mechanisms() if attention.get(m).supports_causal]
    tested = {c.get("attention", "full") for c in CASES.values()}
    tested |= {
        la.get("attention", c.get("attention", "full"))
        for c in CASES.values()
        for la in c.get("layer_attention", [])
    }
    assert set(causal) <= tested, f"no cache test for {set(causal) - tested}"


@pytest.mark.parametrize(
    "name",
    [
        "longformer-rotary-post",
        "longformer-llama-sinks-cache",
        "bigbird-itc-learned",
        "lsh-axial-3-rounds",
    ],
)
def test_cached_logits_fp32_tolerance(name):
    model = lm(torch.float32, **CASES[name])
    seq = torch.randint(4, 260, (1, 40))
    steps, _ = cached_logits(model, seq, torch.tensor([3]), 40, chunk=2)
    with torch.no_grad():
        for t, logits in enumerate(steps):
            ref = model(seq[:, : 3 + t]).logits[0, -1]
            torch.testing.assert_close(logits[0], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    ["full-learned-pre", "longformer-dilated-rotary", "lsh-axial-3-rounds", "bigbird-etc-rotary"],
)
def test_greedy_with_cache_equals_without(name):
    model = lm(**CASES[name])
    prompt = torch.randint(4, 260, (1, 7))
    cached = generate(model, prompt, 20, output_logits=True)
    plain = generate(model, prompt, 20, use_cache=False, output_logits=True)
    assert cached.cache == cache_kind(model) and plain.cache == "none"
    assert torch.equal(cached.sequences, plain.sequences)
    assert len(set(cached.new_tokens().tolist())) > 3  # not a constant stream
    for a, b in zip(cached.logits, plain.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_greedy_is_argmax_of_the_forward():
    """Independent of generate's loop: a hand-written argmax loop over model.forward."""
    model = lm(**LF)
    seq = torch.randint(4, 260, (1, 6))
    out = generate(model, seq, 12)
    with torch.no_grad():
        for _ in range(12):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out.sequences, seq)
    assert out.finish_reasons == ["max_new_tokens"]


@pytest.mark.parametrize(
    "name", ["longformer-rotary-post", "longformer-llama-sinks-cache", "lsh-axial-3-rounds"]
)
def test_batch_with_left_or_right_padding_equals_each_prompt_alone(name):
    model = lm(**CASES[name])
    a, b = torch.randint(4, 260, (9,)), torch.randint(4, 260, (4,))
    alone = [generate(model, p, 15).new_tokens() for p in (a, b)]
    right = torch.zeros(2, 9, dtype=torch.long)
    right[0], right[1, :4] = a, b
    left = torch.zeros(2, 9, dtype=torch.long)
    left[0], left[1, 5:] = a, b
    mask_r = (right != 0).long()
    mask_l = (left != 0).long()
    for ids, mask in ((right, mask_r), (left, mask_l)):
        out = generate(model, ids, 15, attention_mask=mask)
        assert out.prompt_lengths.tolist() == [9, 4] and out.lengths.tolist() == [24, 19]
        for row in range(2):
            assert torch.equal(out.new_tokens(row), alone[row])
        assert torch.equal(out.sequences[1, :4], b)  # prompt moved to the left, pad after
        assert bool((out.sequences[1, 19:] == 0).all())


def test_layers_that_are_not_prefix_stable_refuse_a_cache():
    """Hugging Face's wrapped LSH rounds: the past changes as tokens come, so no cache can be
    exact; generate says so, and use_cache=False decodes it with the full forward."""
    opts = {"chunk_length": 4, "num_buckets": 4}
    model = lm(**{**LSH, "attention": "lsh-hf", "attention_options": opts})
    with pytest.raises(ValueError, match=r"not prefix-stable.*use_cache=False"):
        generate(model, torch.randint(4, 260, (1, 5)), 8)
    seq = torch.randint(4, 260, (1, 5))
    out = generate(model, seq, 8, use_cache=False)
    assert out.cache == "none"
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out.sequences, seq)
    with pytest.raises(ValueError, match="needs a causal model"):
        build_model(ModelConfig(hidden_size=32, num_heads=4, num_layers=1)).body.new_cache(1)


def test_cache_input_errors():
    model = lm(**LF)
    cache = model.new_cache(2)
    with pytest.raises(ValueError, match="cache holds 2 rows, input has 1"):
        model(torch.randint(4, 260, (1, 3)), cache=cache)
    with pytest.raises(ValueError, match="right padding"):
        model(
            torch.randint(4, 260, (2, 3)), attention_mask=torch.tensor([[0, 1, 1]] * 2), cache=cache
        )
    small = lm(max_length=8)
    cache = small.new_cache(1)
    small(torch.randint(4, 260, (1, 8)), cache=cache)
    with pytest.raises(ValueError, match="at most 8 tokens"):
        small(torch.randint(4, 260, (1, 1)), cache=cache)


# ------------------------------------------------------------------------------ memory


def test_ring_cache_is_constant_memory_and_kv_cache_grows_by_doubling():
    model = lm(
        attention="longformer",
        attention_options={"window": 8, "dilation": [1, 2, 1, 1]},
        position="rotary",
    )
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.randint(4, 260, (1, 30)), cache=cache)
        assert all(c.k.shape[2] == 2 * 4 + 1 for c in cache.layers)  # max(d) * w/2 + 1
        before = [(t.data_ptr(), t.shape) for c in cache.layers for t in c.tensors()]
        for _ in range(60):  # decoding allocates nothing new in the cache
            model(torch.randint(4, 260, (1, 1)), cache=cache)
    assert [(t.data_ptr(), t.shape) for c in cache.layers for t in c.tensors()] == before
    assert int(cache.lengths[0]) == 90
    full = lm()
    cache = full.new_cache(1)
    with torch.no_grad():
        full(torch.randint(4, 260, (1, 10)), cache=cache)
        assert [c.k.shape[2] for c in cache.layers] == [64, 64]
        full(torch.randint(4, 260, (1, 60)), cache=cache)
    assert [c.k.shape[2] for c in cache.layers] == [128, 128]


def test_huge_max_new_tokens_reserves_nothing_up_front():
    """max_new_tokens = 10**12 on a ring model (no position limit) must not allocate for it:
    the run stops at eos after a few tokens (it used to reserve the whole token buffer)."""
    model = lm(**LF, position="rotary")
    prompt = torch.randint(4, 260, (1, 5))
    first = generate(model, prompt, 6).new_tokens()
    eos = int(first[-1])
    stop = first.tolist().index(eos) + 1
    out = generate(model, prompt, 10**12, eos_token_id=eos)
    assert out.finish_reasons == ["eos"] and out.sequences.shape == (1, 5 + stop)


# ------------------------------------------------------------------------------ limits


def test_learned_positions_stop_at_max_length():
    model = lm(max_length=32)
    assert position_limit(model) == 32
    out = generate(model, torch.randint(4, 260, (1, 20)), 50)
    assert out.sequences.shape == (1, 32) and out.finish_reasons == ["max_length"]
    with pytest.raises(ValueError, match="exceeds this model's max_length=32"):
        generate(model, torch.randint(4, 260, (1, 33)), 5)


def test_rotary_ring_cache_goes_past_max_length():
    """Positions need no table: the same weights with a larger max_length are the oracle."""
    model = lm(**LF, position="rotary", max_length=16)
    assert position_limit(model) is None and position_limit(model, use_cache=False) == 16
    out = generate(model, torch.randint(4, 260, (1, 10)), 30, output_logits=True)
    assert out.sequences.shape == (1, 40) and out.finish_reasons == ["max_new_tokens"]
    big = build_model(model.config.replace(max_length=64)).double().eval()
    big.load_state_dict(model.state_dict())
    with torch.no_grad():
        for t, logits in enumerate(out.logits):
            ref = big(out.sequences[:, : 10 + t]).logits[0, -1]
            torch.testing.assert_close(logits[0], ref, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------ sampling


def test_filter_logits_top_k_top_p_temperature():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0, 2.5]])
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits / 0.5)
    allowed = lambda z: set(torch.isfinite(z[0]).nonzero().flatten().tolist())  # noqa: E731
    assert allowed(filter_logits(logits, top_k=2)) == {1, 5}
    assert allowed(filter_logits(logits, top_k=10)) == set(range(6))
    probs = logits[0].double().softmax(-1).tolist()
    order = sorted(range(6), key=lambda i: -probs[i])
    for p in (0.05, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0):
        # smallest set of most likely tokens whose mass reaches p (brute force)
        k = next(k for k in range(1, 7) if sum(probs[i] for i in order[:k]) >= p - 1e-9)
        assert allowed(filter_logits(logits, top_p=p)) == set(order[:k]), p
    # top-k first, then top-p on the renormalised top 3 {1, 5, 2}: mass before 5 is 0.51
    assert allowed(filter_logits(logits, top_k=3, top_p=0.5)) == {1}


def test_samples_stay_inside_the_allowed_set_and_cover_it():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.5, -1.0, 2.5]]).expand(4000, -1)
    gen = torch.Generator().manual_seed(0)
    for kw, allowed in (({"top_k": 3}, {1, 2, 5}), ({"top_p": 0.6}, {1, 5})):
        drawn = sample_next(logits, do_sample=True, generator=gen, **kw)
        assert set(drawn.tolist()) == allowed
    drawn = sample_next(logits, do_sample=True, temperature=1e-3, generator=gen)
    assert set(drawn.tolist()) == {1}  # temperature -> 0: greedy
    # frequencies follow the softmax (tolerance ~ 5 standard deviations)
    drawn = sample_next(logits, do_sample=True, generator=gen)
    freq = torch.bincount(drawn, minlength=6).double() / 4000
    torch.testing.assert_close(freq, logits[0].double().softmax(-1), atol=0.04, rtol=0)


def test_seeded_sampling_is_reproducible():
    model = lm(**LF)
    prompt = torch.randint(4, 260, (1, 5))
    kw = dict(do_sample=True, temperature=1.5, top_p=0.95)
    a = generate(model, prompt, 20, seed=7, **kw).sequences
    b = generate(model, prompt, 20, seed=7, **kw).sequences
    c = generate(model, prompt, 20, seed=8, **kw).sequences
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"top_k": 5}, "do_sample=False"),
        ({"do_sample": True, "temperature": 0.0}, "temperature must be > 0"),
        ({"do_sample": True, "top_p": 1.5}, "top_p must be in"),
        ({"do_sample": True, "top_k": 0}, "top_k must be an int >= 1"),
        ({"stop_strings": ["x"]}, "need the tokenizer"),
        ({"attention_mask": torch.tensor([[1, 0, 1, 1]])}, "padding between real tokens"),
        ({"attention_mask": torch.tensor([[0, 0, 0, 0]])}, "no real tokens"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(lm(), torch.tensor([[5, 6, 7, 8]]), 3, **kwargs)


def test_bad_model_and_inputs():
    enc = build_model(ModelConfig(architecture="masked-lm", hidden_size=32, num_heads=4))
    with pytest.raises(ValueError, match="needs a causal-lm model"):
        generate(enc, torch.tensor([[5, 6]]), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be"):
        generate(lm(), torch.tensor([[5, 6]]), 0)
    with pytest.raises(ValueError, match=r"\[0, 260\)"):
        generate(lm(), torch.tensor([[5, 300]]), 3)


# ------------------------------------------------------------------------------ text


def letters_lm() -> torch.nn.Module:
    """A model that can only emit the letters a..h (byte ids), so its text is plain ASCII."""
    model = lm(tie_word_embeddings=False)
    letters = torch.tensor([ord(c) + 4 for c in "abcdefgh"])
    with torch.no_grad():
        dec = model.lm_head.decoder
        keep = torch.zeros(dec.out_features, dtype=torch.bool)
        keep[letters] = True
        dec.weight[~keep] = 0.0
        dec.bias.fill_(-1e4)
        dec.bias[letters] = 0.0
    return model


def test_stop_strings_stop_right_after_the_text_appears():
    model, tok = letters_lm(), ByteTokenizer()
    prompt = torch.tensor([tok.encode("abc")])
    kw = dict(tokenizer=tok, do_sample=True, seed=0)  # seeded: the same text every run
    text = tok.decode(generate(model, prompt, 40, **kw).new_tokens())
    assert len(set(text)) > 3, text
    stop = text[6:9]
    end = text.index(stop) + len(stop)  # first occurrence ends here
    out = generate(model, prompt, 40, stop_strings=["zzz", stop], **kw)
    assert out.finish_reasons == ["stop_string"]
    assert tok.decode(out.new_tokens()) == text[:end]
    # only the generated text counts, not the prompt "abc"
    out = generate(model, prompt, 5, stop_strings="abc", **kw)
    assert out.finish_reasons == ["stop_string" if "abc" in text[:5] else "max_new_tokens"]


def test_eos_stops_a_row_and_pads_it():
    model = letters_lm()
    prompt = torch.tensor([[ord("a") + 4] * 3, [ord("h") + 4] * 3])
    free = generate(model, prompt, 20, do_sample=True, seed=1)
    eos = int(free.new_tokens(0)[4])  # pretend this letter is the end token
    first = free.new_tokens(0).tolist().index(eos)
    out = generate(model, prompt, 20, eos_token_id=eos, do_sample=True, seed=1)
    assert out.finish_reasons[0] == "eos" and int(out.lengths[0]) == 3 + first + 1
    assert bool((out.sequences[0, int(out.lengths[0]) :] == 0).all())


def test_incremental_text_never_splits_a_character():
    tok = ByteTokenizer()
    text = "héllo € 😀 end"
    inc = IncrementalText(tok)
    deltas = [inc.push(i) for i in tok.encode(text)] + [inc.flush()]
    assert "".join(deltas) == text
    assert not any("\ufffd" in d for d in deltas)


def test_streamer_gets_every_token_and_text_streamer_prints_the_text():
    model, tok = letters_lm(), ByteTokenizer()
    seen: list[torch.Tensor] = []
    prompt = torch.tensor([tok.encode("ab"), tok.encode("cd")])
    out = generate(model, prompt, 10, streamer=seen.append)
    assert torch.equal(torch.stack(seen, 1), out.sequences[:, 2:])
    buf = io.StringIO()
    out = generate(model, prompt[:1], 10, streamer=TextStreamer(tok, buf))
    assert buf.getvalue() == tok.decode(out.new_tokens())
    with pytest.raises(ValueError, match="one sequence"):
        generate(model, prompt, 3, streamer=TextStreamer(tok, io.StringIO()))


def test_generate_restores_training_mode():
    model = lm().train()
    generate(model, torch.tensor([[5, 6]]), 2)
    assert model.training


# ------------------------------------------------------------------------------ CLI


def test_cli_generate(tmp_path, capsys):
    model, tok = letters_lm(), ByteTokenizer()
    model.float().save_pretrained(tmp_path / "m", tokenizer=tok)
    expected = tok.decode(generate(model, torch.tensor([tok.encode("abc")]), 12).new_tokens())
    for extra in ([], ["--no-stream"]):
        assert main(["generate", "--model", str(tmp_path / "m"), "--prompt", "abc",
                     "--max-new-tokens", "12", *extra]) == 0  # fmt: skip
        out = capsys.readouterr()
        assert out.out == "abc" + expected + "\n"
        assert "12 new tokens" in out.err and "ms/token; cache kv" in out.err
    # sampling, seeded: same text twice
    args = ["generate", "--model", str(tmp_path / "m"), "--prompt", "abc", "--seed", "4"]
    args += ["--temperature", "1", "--top-k", "3", "--max-new-tokens", "8", "--no-stream"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first and len(first) == len("abc") + 8 + 1


def test_cli_errors_and_byte_fallback(tmp_path, capsys):
    enc = build_model(ModelConfig(architecture="masked-lm", hidden_size=32, num_heads=4))
    enc.save_pretrained(tmp_path / "mlm")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", str(tmp_path / "mlm"), "--prompt", "x"])
    assert exc.value.code == 2 and "causal-lm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tmp_path / "nothing"), "--prompt", "x"])
    assert "no such file" in capsys.readouterr().err.lower()
    lm(torch.float32).save_pretrained(tmp_path / "bare")  # no tokenizer files
    assert main(["generate", "--model", str(tmp_path / "bare"), "--prompt", "hi",
                 "--max-new-tokens", "3", "--stop", "q"]) == 0  # fmt: skip
    assert "using the byte tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--model", str(tmp_path / "bare"), "--prompt", "x", "--top-k", "3"])
    assert "--temperature > 0" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    for path, message in ((tmp_path / "missing.txt", "no such file"), (bad, "not UTF-8")):
        with pytest.raises(SystemExit) as exc:
            main(["generate", "--model", str(tmp_path / "bare"), "--prompt-file", str(path)])
        assert exc.value.code == 2 and message in capsys.readouterr().err


# ------------------------------------------------------------------------------ trained models


@pytest.mark.parametrize(
    "name",
    ["bigbird-itc-learned", "lsh-axial-3-rounds"],
)
def test_trained_lm_loss_through_the_cache_equals_teacher_forcing(name):
    """A small byte-level LM trained 200 steps on this repository's docs: on held-out text,
    the teacher-forced loss equals the loss of the logits computed token by token through
    the cache (the model computes in training what it computes when generating)."""
    from pathlib import Path

    docs = Path(__file__).parents[2] / "docs"
    text = b"".join(p.read_bytes() for p in sorted(docs.glob("*.md")))
    data = torch.tensor(list(text), dtype=torch.long) + 4  # the byte tokenizer's ids
    train, held = data[: len(data) * 9 // 10], data[len(data) * 9 // 10 :]
    torch.manual_seed(0)
    model = lm(torch.float32, **{**CASES[name], "init_std": 0.02, "max_length": 64}).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(200):
        starts = torch.randint(0, len(train) - 64, (8,), generator=g)
        batch = torch.stack([train[s : s + 64] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 1.0  # it learned something
    model.eval()
    seqs = torch.stack([held[s : s + 64] for s in (0, 500, 1000)])
    with torch.no_grad():
        forced = model(seqs, labels=seqs).loss
        cache = model.new_cache(3)
        steps = [model(seqs[:, t : t + 1], cache=cache).logits[:, 0] for t in range(63)]
    logits = torch.stack(steps, 1)
    stepped = torch.nn.functional.cross_entropy(logits.flatten(0, 1), seqs[:, 1:].flatten())
    torch.testing.assert_close(stepped, forced, rtol=1e-5, atol=1e-5)
