"""Peak memory per process, time and communication of one training step (forward+backward)
of a causal LM whose sequence is split over the torchrun processes (docs/distributed.md).

    for w in 1 2 4; do
        torchrun --standalone --nproc_per_node $w examples/sequence_parallel_memory.py \\
            --lengths 8192,16384,32768 --out results/sp_memory.jsonl
    done

Model: hidden 256, 4 heads, feed-forward 1024, 2 layers, byte vocabulary, rotary positions,
fp32, batch 1; the mechanism and its options from the flags. Peak memory: the growth of the
process's resident-set high-water mark during the step (the model and its weights excluded),
the largest over the processes. Traffic: the bytes one process receives through the
collectives in that step (forward and backward), per layer.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from longseq.attention.shard import Shard, reset_traffic, traffic
from longseq.compare.isolate import peak_memory
from longseq.models import ModelConfig, build_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", default="8192,16384")
    p.add_argument("--attention", default="longformer")
    p.add_argument("--options", default='{"window": 256}', help="JSON attention options")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--out", default=None, help="append JSON lines here (rank 0)")
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world > 1 else 0
    torch.set_num_threads(max(1, 2 // world))
    for n in (int(x) for x in args.lengths.split(",")):
        config = ModelConfig(
            architecture="causal-lm",
            attention=args.attention,
            attention_options=json.loads(args.options),
            hidden_size=256,
            num_heads=4,
            intermediate_size=1024,
            num_layers=args.layers,
            max_length=n,
            position="rotary",
            dropout=0.0,
        )
        model = build_model(config, seed=0)
        ids = torch.randint(4, 260, (1, n), generator=torch.Generator().manual_seed(0))
        m = n // world
        local = ids[:, rank * m : (rank + 1) * m]
        shard = Shard(m) if world > 1 else None
        reset_traffic()
        growth = peak_memory("cpu")
        start = time.perf_counter()
        model(local, labels=local, shard=shard).loss.backward()
        seconds = time.perf_counter() - start
        stats = torch.tensor([growth(), seconds, traffic()], dtype=torch.float64)
        if world > 1:
            dist.all_reduce(stats, op=dist.ReduceOp.MAX)
        record = {
            "attention": args.attention,
            "world": world,
            "n": n,
            "peak_mib_per_process": stats[0].item() / 2**20,
            "seconds": stats[1].item(),
            "traffic_mib_per_layer": stats[2].item() / 2**20 / args.layers,
        }
        if rank == 0:
            print(json.dumps(record), flush=True)
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
