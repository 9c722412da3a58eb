"""`longseq bench generate` at tiny sizes: the transformers contender holds the same weights
(its logits are longseq's), a row measures what it says, the table's ratios, the CLI's errors.
"""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from longseq.bench import generate as bg
from longseq.cli import main
from longseq.models import ModelConfig, build_model

pytest.importorskip("transformers")

LLAMA = {
    "architecture": "causal-lm",
    "vocab_size": 100,
    "hidden_size": 32,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "num_layers": 2,
    "intermediate_size": 48,
    "norm_type": "rms",
    "feed_forward": "gated",
    "activation": "silu",
    "bias": False,
    "feed_forward_bias": False,
    "output_bias": False,
    "position": "rotary",
    "rotary_base": 1000.0,
    "max_length": 64,
    "dropout": 0.0,
    "init_std": 0.3,
}


@pytest.mark.parametrize("tied", [True, False])
def test_transformers_contender_has_the_same_weights(tied):
    torch.set_num_threads(1)
    model = build_model(ModelConfig(**LLAMA, tie_word_embeddings=tied), seed=0).eval()
    hf = bg.transformers_llama(model)
    ids = torch.randint(0, 100, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model(ids).logits, hf(ids).logits
    assert (want - got).abs().max() / want.abs().max() < 1e-5
    with torch.no_grad():  # greedy continuations agree: both decode the same model
        ours = model.generate(ids, 6).sequences
        theirs = hf.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(ours, theirs)
    with pytest.raises(ValueError, match="Llama-architecture"):
        bg.transformers_llama(build_model(ModelConfig(architecture="causal-lm", hidden_size=32)))


def test_a_row_measures_prefill_tokens_and_memory(tmp_path):
    build_model(ModelConfig(**LLAMA), seed=0).save_pretrained(tmp_path / "m")
    cfg = bg.GenerateBench(
        model=str(tmp_path / "m"), out=str(tmp_path), new_tokens=4, window=8, threads=1
    )
    for contender in ("window", "dense", "hf-dense"):
        row = bg.measure(asdict(cfg), contender, 80)  # past max_length: longify extends it
        assert set(row) == {"prefill_s", "per_token_ms", "per_token_min_ms", "peak_mb"}
        assert row["prefill_s"] > 0 and 0 < row["per_token_min_ms"] <= row["per_token_ms"]
        assert row["peak_mb"] >= 0
    assert bg.build(cfg, "window", 80).config.max_length == 80
    assert bg.build(cfg, "dense", 16).config.max_length == 64  # the model itself
    sinks = bg.build(cfg, "sinks", 80).config
    assert sinks.global_tokens == 4 and "sink_positions" not in sinks.attention_options
    cached = bg.build(cfg, "sinks-cache", 80).config
    assert cached.global_tokens == 4 and cached.attention_options["sink_positions"] == "cache"


def test_table_ratios_and_reasons():
    def row(contender, n, ms, status="ok"):
        r = {"contender": contender, "context": n, "repeat": 0, "status": status}
        if status == "ok":
            r.update(per_token_ms=ms, per_token_min_ms=ms, prefill_s=1.0, peak_mb=10.0)
        else:
            r["reason"] = "dense prefill of 32768 tokens is O(n^2)"
        return r

    records = [
        row("sinks", 1024, 40.0),
        row("hf-dense", 1024, 50.0),
        row("sinks", 32768, 48.0),
        row("hf-dense", 32768, None, "skipped"),
    ]
    text = bg.table(records)
    assert "| sinks | 1024 | 0.80x | 1.00x |" in text
    assert "| sinks | 32768 | – | 1.20x |" in text
    assert "- dense prefill of 32768 tokens is O(n^2)" in text


def test_cli_errors(tmp_path, capsys):
    for args, message in (
        (["--model", str(tmp_path), "--contenders", "sinks,nope"], "unknown contender(s) nope"),
        (["--model", str(tmp_path)], "no config.json"),
        (["--model", str(tmp_path), "--sinks", "-1"], "--sinks must be >= 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["bench", "generate", *args, "--out", str(tmp_path / "o")])
        assert exc.value.code == 2 and message in capsys.readouterr().err
