"""FlexAttention on the CPU against the native kernels: one layer, forward, no gradient.

    PYTHONPATH=src python examples/flex_cpu_speed.py

Builds each layer twice (backend="native" and "flex", the same weights), times the first flex
call (it compiles Inductor's C++ kernel: a C compiler is needed), then 3 calls of each,
alternating, and prints the largest difference of the outputs. docs/benchmarks.md quotes it.
"""

from __future__ import annotations

import time

import torch

from longseq import attention

CASES = [
    ("longformer", {"window": 256}, 2048),
    ("bigbird", {"block_size": 64, "num_random_blocks": 3}, 2048),
]


def main() -> None:
    torch.set_num_threads(2)
    for name, opts, n in CASES:
        torch.manual_seed(0)
        native = attention.build(name, 256, 4, **opts).eval()
        flexed = attention.build(name, 256, 4, backend="flex", **opts).eval()
        flexed.load_state_dict(native.state_dict())
        x = torch.randn(1, n, 256)
        mask = torch.ones(1, n, dtype=torch.long)
        with torch.no_grad():
            t0 = time.perf_counter()
            got = flexed(x, mask)
            first = time.perf_counter() - t0
            diff = (got - native(x, mask)).abs().max().item()
            pairs = []
            for _ in range(3):
                t0 = time.perf_counter()
                flexed(x, mask)
                t1 = time.perf_counter()
                native(x, mask)
                pairs.append((round((t1 - t0) * 1e3), round((time.perf_counter() - t1) * 1e3)))
        print(f"{name} {opts} n={n}: first flex call {first:.0f} s; (flex, native) ms {pairs}; "
              f"max difference {diff:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
