"""What every longseq model shares: the config, input checks, weight init, save and load.

A saved model is a folder with `config.json` (the `ModelConfig`) and `model.safetensors`
(the weights; tied weights stored once), plus the tokenizer's files when one is given.
Loading never unpickles: safetensors holds only tensors, and every name and shape is checked
against the model the config builds before anything is loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

import longseq
from longseq import attention
from longseq.attention import ops
from longseq.models.config import ModelConfig
from longseq.models.transformer import Transformer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file, with clear errors (missing, cut or not safetensors);
    nothing is unpickled."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None


class LongseqModel(nn.Module):
    """Base of every head: `self.body` is the Transformer; subclasses add their head."""

    architecture: ClassVar[str] = "encoder"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.architecture != self.architecture:
            config = config.replace(architecture=self.architecture)
        self.config = config
        self.body = Transformer(config)

    # --------------------------------------------------------------------- init
    def init_weights(self) -> None:
        """BERT-style init: N(0, init_std) for linear and embedding weights, zero biases."""
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                if m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm | nn.RMSNorm):
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    # --------------------------------------------------------------------- inputs
    def check_inputs(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        global_attention_mask: Tensor | None,
        first_token: bool = True,
    ) -> tuple[Tensor | None, Tensor | None]:
        """Validate the HF-style inputs; returns (attention_mask, global_attention_mask).

        `first_token`: input_ids start with the sequence's first token (not so on the later
        shards of a sequence split over processes), which a sequence-level head makes global."""
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids)
            raise ValueError(f"input_ids must be a (batch, seq) tensor, got {shape}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        n = input_ids.shape[1]
        if n == 0:
            raise ValueError("input_ids has no tokens (seq length 0)")
        if n > cfg.max_length:
            raise ValueError(
                f"sequence length {n} exceeds this model's max_length={cfg.max_length}; "
                "truncate the input or build a model with a larger max_length "
                "(`longseq longify` extends a trained one)"
            )
        # a traced program (torch.export, ONNX) cannot branch on values: the ids go unchecked
        lo, hi = (0, 0) if ops.tracing() else (int(input_ids.min()), int(input_ids.max()))
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {cfg.vocab_size}) (vocab_size), got min {lo} max {hi}"
            )
        for name, m in (
            ("attention_mask", attention_mask),
            ("global_attention_mask", global_attention_mask),
        ):
            if m is not None and tuple(m.shape) != tuple(input_ids.shape):
                raise ValueError(
                    f"{name} shape {tuple(m.shape)} != input_ids shape {tuple(input_ids.shape)}"
                )
        if global_attention_mask is None and cfg.global_cls and self.uses_cls_global:
            if self.supports_global and first_token:
                global_attention_mask = self.default_global(input_ids)
        elif global_attention_mask is not None and not self.supports_global:
            takers = [m for m in attention.mechanisms() if attention.get(m).supports_global]
            raise ValueError(
                "global_attention_mask given, but no layer of this model has global tokens "
                f"(attention {cfg.attention!r}); layers that take one: {', '.join(takers)}"
            )
        return attention_mask, global_attention_mask

    uses_cls_global: ClassVar[bool] = False  # heads that read the first token set this

    def default_global(self, input_ids: Tensor) -> Tensor:
        """The global tokens of a head that sets `uses_cls_global`, when the caller gives none:
        the first token (QA overrides it)."""
        mask = torch.zeros_like(input_ids)
        mask[:, 0] = 1
        return mask

    @property
    def supports_global(self) -> bool:
        return any(b.attn.attention.supports_global for b in self.body.layers)

    # --------------------------------------------------------------------- info
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def pad_multiple(self, length: int | None = None) -> int:
        """The length multiple that avoids padding inside the attention layers (1: any).

        With `length` (the longest batch), 1 where rounding it up to that multiple would pass
        max_length: the layers then pad themselves."""
        multiple = 1
        for b in self.body.layers:  # each mechanism says what it pads to
            multiple = math.lcm(multiple, b.attn.attention.length_multiple)
        multiple *= self.config.conv_pool  # a stem's position holds conv_pool inputs
        if length is not None and -(-length // multiple) * multiple > self.config.max_length:
            return 1
        return multiple

    # --------------------------------------------------------------------- save / load
    def tied_keys(self) -> set[str]:
        """State-dict keys that alias another key (stored once in the file)."""
        seen: dict[int, str] = {}
        tied: set[str] = set()
        for name, t in self.state_dict(keep_vars=True).items():
            key = t.data_ptr() if t.numel() else id(t)
            if key in seen:
                tied.add(name)
            else:
                seen[key] = name
        return tied

    def save_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        """Write config.json + model.safetensors (+ the tokenizer's files) to `directory`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save(out / CONFIG_NAME)
        tied = self.tied_keys()
        state = {
            k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k not in tied
        }
        meta = {"format": "pt", "longseq_version": longseq.__version__}
        save_file(state, str(out / WEIGHTS_NAME), metadata=meta)
        if tokenizer is not None:
            tokenizer.save(out)
        return out

    def load_weights(self, path: str | Path) -> None:
        """Load a safetensors file into this model; names and shapes must all match."""
        path = Path(path)
        state = read_weights(path)
        expected = {k: v for k, v in self.state_dict().items() if k not in self.tied_keys()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match the model its config builds: missing "
                f"{missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected "
                f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
            )
        bad = [
            f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}"
            for k, v in expected.items()
            if tuple(state[k].shape) != tuple(v.shape)
        ]
        if bad:
            raise ValueError(
                f"{path}: weight shapes do not match config.json: " + "; ".join(bad[:5])
            )
        self.load_state_dict(state, strict=False)


def read_config(directory: str | Path) -> dict[str, Any]:
    """The raw config.json of a saved model (for tools that only inspect it)."""
    return json.loads((Path(directory) / CONFIG_NAME).read_text())


__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "LongseqModel",
    "read_config",
    "read_weights",
]
