"""Models by architecture: `build_model` (fresh) and `from_pretrained` (saved).

The classes are the heads' (`heads.MODEL_CLASSES`); this module sits above `base` and `heads`,
so neither imports the other in a circle.
"""

from __future__ import annotations

from pathlib import Path

import torch

from longseq.models.base import CONFIG_NAME, WEIGHTS_NAME, LongseqModel
from longseq.models.config import ModelConfig
from longseq.models.heads import MODEL_CLASSES

_CLASSES: dict[str, type[LongseqModel]] = {c.architecture: c for c in MODEL_CLASSES}


def build_model(config: ModelConfig, *, seed: int | None = None) -> LongseqModel:
    """A freshly initialised model of `config.architecture` (seeded if `seed` is given)."""
    cls = _CLASSES[config.architecture]
    if seed is None:
        model = cls(config)
        model.init_weights()
        return model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        model.init_weights()
    return model


def from_pretrained(
    directory: str | Path, *, architecture: str | None = None, device: str | torch.device = "cpu"
) -> LongseqModel:
    """Load a model saved by `save_pretrained`. `architecture` may switch the head (for
    fine-tuning a pre-trained body: weights of the old head are dropped, the new head is fresh).
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"no model folder at {d}")
    config = ModelConfig.load(d / CONFIG_NAME)
    if architecture is None or architecture == config.architecture:
        model = _CLASSES[config.architecture](config)
        model.load_weights(d / WEIGHTS_NAME)
    else:
        model = build_model(config.replace(architecture=architecture))
        source = _CLASSES[config.architecture](config)
        source.load_weights(d / WEIGHTS_NAME)
        body = {k: v for k, v in source.state_dict().items() if k.startswith("body.")}
        model.load_state_dict(body, strict=False)
    return model.to(device).eval()


__all__ = ["build_model", "from_pretrained"]
