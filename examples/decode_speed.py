"""Per-token decoding time and cache memory of every causal mechanism (docs/generation.md).

    python examples/decode_speed.py            # one thread, batch 1, prompts of 1024 and 4000

A small causal LM with the ModelConfig defaults (hidden 256, 4 layers, 4 heads, byte
vocabulary, learned positions, max_length 4096) and random weights, in fp32. Per-token time is
the gap between streamed tokens (fastest / median of 63 gaps) with the cache, and of 3 gaps
with use_cache=False (the full forward at every step).
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from longseq.models import ModelConfig, build_model
from longseq.models.generation import cache_kind, generate

SPECS = [
    ("full", {}),
    ("longformer", {"window": 256}),
    ("local", {"chunk_length": 128}),
    ("bigbird", {"block_size": 64}),
    ("lsh", {"chunk_length": 64, "n_hashes": 2}),
]


def per_token_ms(
    model: torch.nn.Module, n: int, use_cache: bool, steps: int
) -> tuple[float, float]:
    stamps: list[float] = []
    prompt = torch.randint(4, 260, (1, n), generator=torch.Generator().manual_seed(0))
    generate(model, prompt, steps, use_cache=use_cache,
             streamer=lambda t: stamps.append(time.perf_counter()))  # fmt: skip
    gaps = [1000 * (b - a) for a, b in itertools.pairwise(stamps)]
    return min(gaps), statistics.median(gaps)


def main() -> None:
    torch.set_num_threads(1)
    print("| model | prompt tokens | cached: ms per token | use_cache=False: ms per token "
          "| cache memory (MiB) |\n|---|---|---|---|---|")  # fmt: skip
    for attention, options in SPECS:
        config = ModelConfig(architecture="causal-lm", attention=attention,
                             attention_options=options, max_length=4096)  # fmt: skip
        model = build_model(config, seed=0).eval()
        for n in (1024, 4000):
            lo, med = per_token_ms(model, n, True, 64)
            cache = model.new_cache(1)
            with torch.no_grad():
                model(torch.randint(4, 260, (1, n)), cache=cache)
            mib = sum(t.numel() * t.element_size() for c in cache.layers for t in c.tensors())
            rlo, rmed = per_token_ms(model, n, False, 4)
            print(f"| {attention} (`{cache_kind(model)}`) | {n} | {lo:.1f} / {med:.1f} | "
                  f"{rlo:.0f} / {rmed:.0f} | {mib / 2**20:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
