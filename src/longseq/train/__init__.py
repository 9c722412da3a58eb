"""Training: `train(config) -> TrainResult`, from one CPU process to many GPUs via torchrun.

    from longseq.train import TrainConfig, train
    config = TrainConfig(
        model={"attention": "longformer", "attention_options": {"window": 64},
               "hidden_size": 128, "num_layers": 2, "num_heads": 4, "intermediate_size": 256},
        data={"task": "classification", "train": "data/shakespeare/train.jsonl",
              "val": "data/shakespeare/val.jsonl", "max_length": 1024, "batch_size": 8},
        optim={"lr": 1e-3, "warmup_steps": 20, "max_steps": 300},
        run={"out": "runs/genre", "eval_every": 50},
    )
    result = train(config)              # result.evals, result.best, result.tokens_per_second
    result = train(config, resume=True)  # continue from runs/genre/last

`train` sits on top of `models` and `data`; see docs/training.md for the YAML schema.
"""

from longseq.train.config import (
    DataConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    load_config,
)
from longseq.train.trainer import TrainResult, build_training_model, train

__all__ = [
    "DataConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "build_training_model",
    "load_config",
    "train",
]
