"""`longseq bench model` at tiny sizes, and its pieces (the mechanism swap, the table)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from longseq.bench import model as bm
from longseq.cli import main

transformers = pytest.importorskip("transformers")


@pytest.fixture
def tiny_config(tmp_path) -> str:
    """A tiny Longformer's config.json (window 32: wider than the inputs below)."""
    cfg = transformers.LongformerConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        attention_window=32,
        max_position_embeddings=130,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        architectures=["LongformerModel"],
    )
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json_string())
    return str(path)


def _check_outputs(out, lengths) -> None:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {(r["mechanism"], r["n"], r["mode"]) for r in rows} == {
        (m, n, mode) for m in ("longseq", "full", "hf") for n in lengths for mode in bm.MODES
    }
    for r in rows:
        assert r["status"] == "ok", r["reason"]
        assert r["median_ms"] > 0 and r["peak_mb"] >= 0 and r["machine"]["cpu_count"]
        assert r["tokens_per_s"] == pytest.approx(r["n"] / (r["median_ms"] / 1e3))
    assert {r["kind"] for r in rows if r["mechanism"] == "hf"} == {"peer"}
    table = (out / "table.md").read_text()
    assert "| longseq |" in table and f"- hf: n={lengths[0]}: " in table
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_model_tiny_writes_the_three_outputs(tmp_path, tiny_config):
    """In this process (the memory probes' fresh processes are tested by the slow test)."""
    out = tmp_path / "bench"
    cfg = bm.ModelBenchConfig(
        hf_config=tiny_config, lengths=[32], repeats=1, warmup=0, progress=False, out=str(out)
    )
    bm.run(dataclasses.replace(cfg, isolate=False), log=lambda _: None)
    _check_outputs(out, [32])


@pytest.mark.slow
def test_bench_model_command(tmp_path, capsys, tiny_config):
    """The command end to end, memory probed in fresh processes (the fork server's start
    costs about a minute of a loaded machine: on the schedule)."""
    out = tmp_path / "bench"
    args = ["bench", "model", "--hf-config", tiny_config, "--lengths", "32,64", "--repeats", "1"]
    assert main([*args, "--warmup", "0", "--no-progress", "--out", str(out)]) == 0
    _check_outputs(out, [32, 64])
    assert "wrote" in capsys.readouterr().out


def test_the_rows_carry_the_same_weights(tiny_config):
    """With a window wider than the input, Longformer is full attention: the converted model,
    the same weights under `full`, and Hugging Face's model give the same states."""
    cfg = bm.ModelBenchConfig(hf_config=tiny_config)
    n = 16  # every key within window/2 = 16 of every query
    states = {}
    for row in ("longseq", "full", "hf"):
        model = bm.build_row(row, cfg, n)
        with torch.no_grad():
            states[row] = bm.make_call(model, cfg, n)(None)
    torch.testing.assert_close(states["full"], states["longseq"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(states["hf"], states["longseq"], rtol=1e-4, atol=1e-4)


def test_any_mechanism_swaps_in_on_the_same_weights(tiny_config):
    opts = {"block_size": 4}
    cfg = bm.ModelBenchConfig(hf_config=tiny_config, attention="bigbird", attention_options=opts)
    model = bm.build_row("longseq", cfg, 32)
    assert model.config.attention == "bigbird"
    ours = bm.build_row("longseq", bm.ModelBenchConfig(hf_config=tiny_config), 32)
    shared = set(model.state_dict()) & set(ours.state_dict())
    assert len(shared) > 10
    for key in shared:
        assert torch.equal(model.state_dict()[key], ours.state_dict()[key]), key


def test_bad_options_are_refused(capsys):
    base = ["bench", "model", "--out", "x"]
    with pytest.raises(SystemExit):
        main([*base, "--attention-options", "{bad"])
    assert "--attention-options is not JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--attention", "nope"])
    assert "unknown --attention 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--attention-options", '{"window": 8}'])
    assert "--attention-options needs --attention" in capsys.readouterr().err


def test_table_reads_the_ratios_to_longseq():
    def rec(m: str, mode: str, ms: float) -> dict:
        return {
            "mechanism": m,
            "n": 4096,
            "mode": mode,
            "status": "ok",
            "median_ms": ms,
            "tokens_per_s": 4096 / ms * 1e3,
            "peak_mb": 10.0,
        }

    records = [rec(m, mode, ms) for mode in bm.MODES for m, ms in (("longseq", 100), ("hf", 300))]
    records.append({**rec("longseq-flex", "fwd+bwd", 1), "status": "skipped", "reason": "no bwd"})
    text = bm.table(records, "settings")
    assert "- hf: n=4096: 3.00x" in text
    assert "| longseq | 100 | 40960 | 10 |" in text
    assert "- longseq-flex fwd+bwd n=4096: no bwd" in text
