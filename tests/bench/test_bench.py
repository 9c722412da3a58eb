"""`longseq bench attention` at tiny sizes, and the pieces it is made of."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from longseq import attention
from longseq.attention.local import LocalAttention
from longseq.attention.lsh import derived_num_buckets
from longseq.bench import attention as ba
from longseq.bench import peers, report
from longseq.cli import main

FIELDS = {
    "mechanism",
    "kind",
    "family",
    "compare_to",
    "n",
    "mode",
    "status",
    "reason",
    "median_ms",
    "times_ms",
    "peak_mb",
    "settings",
    "hidden",
    "heads",
    "batch",
    "dtype",
    "device",
    "threads",
    "repeats",
    "warmup",
    "machine",
    "torch",
}
TINY = ["--hidden", "32", "--heads", "2", "--repeats", "1", "--warmup", "0", "--no-progress"]


def read_results(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_bench_attention_tiny_writes_the_three_outputs(tmp_path, capsys):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "attention",
            *TINY,
            "--lengths",
            "128,256",
            "--no-peers",
            "--mechanisms",
            "longformer",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    rows = read_results(out)
    names = ["projections", "full", "longformer", "longformer+global"]
    assert {(r["mechanism"], r["n"], r["mode"]) for r in rows} == {
        (m, n, mode) for m in names for n in (128, 256) for mode in ("forward", "fwd+bwd")
    }
    for r in rows:
        assert set(r) >= FIELDS, FIELDS - set(r)
        assert r["status"] == "ok", r["reason"]
        assert r["median_ms"] > 0 and len(r["times_ms"]) == 1 and r["peak_mb"] >= 0
        assert r["hidden"] == 32 and r["threads"] == 2 and r["machine"]["cpu_count"]
    glob = next(r for r in rows if r["mechanism"] == "longformer+global")
    assert glob["settings"] == {"window": 512, "global_tokens": 1}

    table = (out / "table.md").read_text()
    assert "| mechanism | n=128 | n=256 |" in table
    assert "| longformer+global |" in table and "growth n=128 -> n=256" in table
    assert (out / "plot.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "Forward+backward time" in printed and "longformer: window=512" in printed


class _BenchOnlyLocal(LocalAttention):
    """Registered by a test only: the table of rows in bench/attention.py has never heard of
    it."""

    name = "test-bench-local"


def test_every_registered_mechanism_gets_a_row(tmp_path):
    """The default --mechanisms come from the registry, and each gets a measured row: `local`
    (no row in the table) once failed in the probe's child with KeyError: 'local'."""
    attention.register(_BenchOnlyLocal)
    try:
        out = tmp_path / "bench"
        assert main(["bench", "attention", *TINY, "--lengths", "64", "--no-peers",
                     "--out", str(out)]) == 0  # fmt: skip
    finally:
        attention.unregister(_BenchOnlyLocal.name)
    rows = read_results(out)
    assert {"local", _BenchOnlyLocal.name} <= {r["family"] for r in rows}
    assert set(attention.mechanisms()) - {"full"} <= {r["family"] for r in rows}
    for r in rows:
        assert r["status"] == "ok", (r["mechanism"], r["reason"])


def test_bench_with_a_peer(tmp_path):
    out = tmp_path / "bench"
    assert (
        main(
            [
                "bench",
                "attention",
                *TINY,
                "--lengths",
                "256",
                "--mechanisms",
                "linformer",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = {(r["mechanism"], r["mode"]): r for r in read_results(out)}
    peer = rows["lucidrains-linformer", "fwd+bwd"]
    assert peer["status"] == "ok" and peer["kind"] == "peer"
    assert peer["compare_to"] == "linformer"
    assert rows["linformer", "fwd+bwd"]["settings"]["k"] == 256  # k = min(256, n)
    assert "linformer / lucidrains-linformer" in (out / "table.md").read_text()


def test_rows_over_the_limits_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "bench"
    code = main(
        [
            "bench",
            "attention",
            *TINY,
            "--lengths",
            "64,128",
            "--no-peers",
            "--mechanisms",
            "full",
            "--max-seconds",
            "1e-9",
            "--out",
            str(out),
        ]
    )
    assert code == 1  # nothing could be measured
    rows = read_results(out)
    assert len(rows) == 8 and all(r["status"] == "skipped" for r in rows)
    first = next(r for r in rows if r["mechanism"] == "full" and r["n"] == 64)
    assert "> --max-seconds 1e-09" in first["reason"] and first["median_ms"] is None
    later = next(r for r in rows if r["mechanism"] == "full" and r["n"] == 128)
    assert later["reason"].startswith("skipped after: one fwd+bwd took")
    assert "## Skipped" in (out / "table.md").read_text()


def test_memory_limit_from_the_shorter_lengths():
    cfg = ba.Config(max_memory_gb=3.0)
    spec = ba.row("full")
    one_gib = [(1024, float(2**30))]
    assert ba._precheck(spec, 1024, cfg, {"mem": one_gib, "sec": []}, {}) is None
    reason = ba._precheck(spec, 2048, cfg, {"mem": one_gib, "sec": []}, {})
    assert reason == "expected peak memory 4.0 GiB > --max-memory-gb 3"  # quadratic guess
    linear = [(512, 2.0**29), *one_gib]
    assert ba._precheck(spec, 2048, cfg, {"mem": linear, "sec": []}, {}) is None  # 2 GiB


def test_peer_length_rules_give_reasons():
    with pytest.raises(peers.PeerUnavailable, match="multiple of attention_window=512"):
        peers.build_peer("hf_longformer", 32, 2, 768)
    with pytest.raises(peers.PeerUnavailable, match="n > 704"):
        peers.build_peer("hf_bigbird", 32, 2, 512)
    with pytest.raises(peers.PeerUnavailable, match="lsh_attn_chunk_length=64"):
        peers.build_peer("hf_reformer", 32, 2, 100)


def test_select_and_settings():
    names = [s.name for s in ba.select(["lsh"], peers=True)]
    assert names == ["projections", "full", "lsh-4h", "lsh-1h", "hf-reformer-4h", "hf-reformer-1h"]
    assert [s.name for s in ba.select(["bigbird"], peers=False)] == [
        "projections",
        "full",
        "bigbird",
    ]
    with pytest.raises(ValueError, match="valid: full, longformer"):
        ba.select(["performer"], peers=False)
    lsh = ba.row("lsh-4h").options(4096)
    peer = ba.row("hf-reformer-4h").options(4096)
    assert lsh == peer and "num_buckets" not in lsh  # left to each: HF's rule at n, below
    assert ba.row("linformer").options(2048) == {
        "k": 256,
        "sharing": "headwise",
        "max_seq_len": 2048,
    }
    pytest.importorskip("transformers")
    hf = peers.build_peer("hf_reformer", 32, 2, 4096, **peer).module.attn
    assert hf.num_buckets == derived_num_buckets(4096, 64) == 128  # 2n/chunk, a power of 2


def test_extrapolate():
    assert ba.extrapolate([], 2048) is None
    assert ba.extrapolate([(1024, 10.0)], 2048) == pytest.approx(40.0)  # one point: quadratic
    assert ba.extrapolate([(1024, 10.0), (2048, 20.0)], 8192) == pytest.approx(80.0)
    assert ba.extrapolate([(1024, 10.0), (2048, 10.0)], 4096) == pytest.approx(20.0)  # >= linear


def test_report_ratios():
    def rec(m, n, ms, mb, kind="ours", compare_to=None):
        return {
            "mechanism": m,
            "kind": kind,
            "compare_to": compare_to,
            "n": n,
            "mode": "fwd+bwd",
            "status": "ok",
            "median_ms": ms,
            "peak_mb": mb,
        }

    records = [
        rec("projections", 4096, 10.0, 100.0, "baseline"),
        rec("projections", 16384, 40.0, 400.0, "baseline"),
        rec("longformer", 4096, 15.0, 200.0),
        rec("longformer", 16384, 60.0, 800.0),
        rec("hf-longformer", 4096, 30.0, 800.0, "peer", "longformer"),
        {
            **rec("hf-longformer", 16384, None, None, "peer", "longformer"),
            "status": "skipped",
            "reason": "too big",
        },
    ]
    text = report.table(records)
    assert "| longformer / hf-longformer | 0.5x; 0.25x | – |" in text
    assert "| longformer | 1.5x | 1.5x |" in text  # vs projections at each n
    assert "growth n=4096 -> n=16384" in text and "| longformer | 4x | 4x |" in text
    assert "- hf-longformer at n=16384: too big" in text


def test_round_robin_repeats_while_the_calls_spread(monkeypatch):
    """A disturbed layer gets extra rounds until its calls settle (or max_repeats is hit)."""
    from longseq.bench import attention as A

    script = {"calm": iter([1.0] * 100), "noisy": iter([1.0, 3.0, 1.0, 1.1] + [1.0] * 100)}

    def fake_call(module, fn, x, mode, device):
        return next(script[module]) / 1e3 if mode == "fwd+bwd" else 1e-3

    monkeypatch.setattr(A, "call_once", fake_call)
    rows = [(SimpleNamespace(name=n), n, None) for n in ("calm", "noisy")]
    cfg = A.Config(repeats=2, warmup=1, max_repeats=6, tolerance=0.25)
    times, failed = A.time_round_robin(rows, torch.zeros(1, 4), cfg)
    assert not failed
    # rounds: warm-up (1.0), then 3.0, 1.0 (spread 2: go on), 1.1 (still 3.0 in it) ... to 6
    assert len(times["noisy"]["fwd+bwd"]) == 6
    assert A.spread([1.0, 1.2]) == pytest.approx(0.2) and A.spread([5.0]) == 0.0
    # without max_repeats: exactly `repeats`
    script["noisy"] = iter([1.0, 3.0, 1.0] + [1.0] * 10)
    times, _ = A.time_round_robin(rows, torch.zeros(1, 4), A.Config(repeats=2, warmup=1))
    assert len(times["noisy"]["fwd+bwd"]) == 2
