"""The patterns' predictions for recall, against brute force and closed forms."""

from __future__ import annotations

import pytest
import torch

from longseq.attention import build, patterns
from longseq.compare import predict


def test_paths_on_a_chain() -> None:
    # each hop moves one step to the right (or stays): L hops reach L steps
    n = 6
    step = torch.zeros(n, n, dtype=torch.bool)
    step[torch.arange(1, n), torch.arange(n - 1)] = True  # q sees q - 1
    reach = predict.paths([step, step])
    q, p = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    assert torch.equal(reach, (q - p >= 0) & (q - p <= 2))


def test_longformer_reach_is_its_window() -> None:
    r = predict.reach("longformer", {"window": 8}, 40, num_layers=3, num_heads=2)
    q, p = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    d = (q - p).abs()
    assert torch.equal(r.low.bool(), d <= 4)
    assert torch.equal(r.high.bool(), d <= 12)  # three hops of w/2


def test_bigbird_reach_uses_each_layers_own_layout() -> None:
    opts = {"block_size": 4, "num_random_blocks": 1, "num_global_blocks": 0}
    masks = predict.layer_masks("bigbird", opts, 64, num_layers=2, num_heads=2)
    assert not torch.equal(masks[0], masks[1])  # random blocks drawn per layer
    for layer, m in enumerate(masks):
        mine = patterns.bigbird(
            64,
            block_size=4,
            num_heads=2,
            num_random_blocks=1,
            num_global_blocks=0,
            layer_idx=layer,
        ).any(0)
        assert torch.equal(m, mine)
    r = predict.reach("bigbird", opts, 64, num_layers=2, num_heads=2)
    assert torch.equal(r.low.bool(), masks[0] | masks[1])
    assert bool((r.high >= r.low).all())


def test_lsh_round_is_the_layers_pattern() -> None:
    """patterns.lsh_round from the layer's own buckets = the pairs the layer scores."""
    torch.manual_seed(0)
    layer = build("lsh", 16, 2, chunk_length=4, n_hashes=3, num_buckets=4).double()
    x = torch.randn(1, 24, 16, dtype=torch.double)
    buckets = layer.buckets(x)[0]  # (H, R, N)
    scored = layer.scored_pairs(x)[0] > 0
    for h in range(2):
        mods = [patterns.lsh_round(buckets[h, r], 4) for r in range(3)]
        assert torch.equal(patterns.materialize(patterns.or_masks(*mods), 24), scored[h])


def test_lsh_reach_against_a_closed_form() -> None:
    """Chunks of one token: q sees p only when no token between them shares their bucket,
    probability (1 - 1/b)^(d - 1) for b uniform buckets."""
    from longseq import attention

    b = 4
    lsh = attention.build("lsh", 8, 2, chunk_length=1, num_buckets=b)
    r, high, _ = lsh.reach_bound(32, 1, samples=3000, seed=0)
    assert torch.equal(r, high)
    for d in (1, 2, 4, 8):
        got = torch.diagonal(r, -d)[4:-4].mean().item()
        assert got == pytest.approx((1 - 1 / b) ** (d - 1), abs=0.03)
    # one chunk holds everything: always seen
    whole = attention.build("lsh", 8, 2, chunk_length=16, num_buckets=2).reach_bound(16, 1)[0]
    assert torch.all(whole == 1)


def test_linformer_and_full() -> None:
    r = predict.reach("linformer", {"k": 16}, 64, 2, 2)
    assert predict.band(r, [(10, 3)], 0.25) == (0.25, pytest.approx(0.25 + 0.75 * 16 / 64))
    f = predict.reach("full", {}, 8, 1, 1)
    assert predict.band(f, [(7, 0), (3, 2)], 0.1) == (1.0, 1.0)
    with pytest.raises(ValueError, match="unknown attention mechanism 'mystery'"):
        predict.reach("mystery", {}, 8, 1, 1)


@pytest.mark.parametrize(
    ("measured", "low", "high", "word"),
    [
        (0.50, 0.10, 0.20, "above"),
        (0.10, 0.80, 1.00, "below"),
        (0.90, 0.85, 1.00, "agrees"),
        (0.15, 0.12, 0.90, "agrees"),
    ],
)
def test_verdict(measured: float, low: float, high: float, word: str) -> None:
    assert predict.verdict(measured, low, high, margin=0.05).startswith(word)
