"""Presets of `longseq compare`: one model size, data size and budget shared by every mechanism.

A preset fixes everything but the attention: the model (hidden size, layers, heads,
feed-forward size, dropout), the optimisation (steps, batch, learning rate, warm-up, weight
decay), the data (ListOps sizes and kept lengths; tokens per document or per LM block for the
real-data tasks), the settings of each mechanism at that length, and the short
forward+backward sweep over sequence lengths. Each mechanism is then trained with exactly the
same values and the same seed.

- `recall`: what `make run` runs (the recall task's preset), about 6 minutes on 2 CPU cores
  with all five mechanisms and 2 seeds each: associative recall at 256 tokens, with windows
  and blocks small enough that distance decides what each pattern reaches.
- `default`: ListOps' preset, under 15 minutes on 2 CPU cores with all five mechanisms
  (docs/experiments.md explains the choice).
- `cpu`: the largest run that fits a few hours on 2 CPU cores: the small 2-layer model that
  reproduces the LRA ListOps figures in later work, at the full LRA lengths.
- `lra`: the Long Range Arena ListOps settings (6 layers, hidden 512, 8 heads, feed-forward
  2048, 5,000 steps of batch 32, lengths up to 2,000, 96k/2k/2k examples), for a GPU.

A preset names no mechanism's option: its `reach` says about how many keys a query of a sparse
layer may see (a few hundred at most, so that at the preset's lengths each mechanism does a
fraction of full attention's work), and each mechanism derives its own options from it
(`SelfAttention.options_at`: Longformer a window of `reach` keys, BigBird blocks of reach/4,
...). `options` sets a mechanism's options by its registered name, over what it derives (the
`cpu` and `lra` presets: BigBird's 3 random blocks, as its paper).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from longseq import attention
from longseq.models.config import MODEL_OWNED
from longseq.train.config import apply_override


def default_mechanisms() -> tuple[str, ...]:
    """The mechanisms compared by default, in report order: every registered one that says so
    (`compared`), registered later ones included."""
    return tuple(m for m in attention.mechanisms() if attention.get(m).compared)


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    # model: the same for every mechanism
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    dropout: float = 0.1
    pooling: str = "cls"  # classification: the first token's state, as LRA's models
    # a convolutional stem (`longseq.layers.stem`; 0 layers, pool 1: none): for DNA, whose
    # bases are tokens; text_length then counts bases and `reach` positions of conv_pool bases
    conv_layers: int = 0
    conv_kernel: int = 9
    conv_pool: int = 1
    conv_dilation: int = 1
    # optimisation (AdamW, linear warm-up then linear decay to 0)
    steps: int = 300
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    eval_every: int = 50
    eval_batches: int | None = None  # None: the whole validation split
    seed: int = 0
    seeds: int = 1  # training runs per mechanism, seeds seed, seed + 1, ... (data: `seed`)
    # ListOps (LRA generator): examples per split and kept lengths (min < length < max)
    listops_train: int = 96_000
    listops_val: int = 2_000
    listops_test: int = 2_000
    listops_min_length: int = 500
    listops_max_length: int = 2_000
    # recall (`longseq.data.recall`): tokens, pairs, vocabularies and examples per split; the
    # distance ranges follow from the reach (`longseq.tasks.recall.recall_spec`)
    recall_length: int = 256
    recall_pairs: int = 8
    recall_keys: int = 32
    recall_values: int = 8
    recall_filler: int = 8
    recall_train: int = 16_000
    recall_val: int = 500
    recall_test: int = 1_000
    # real-data tasks: bytes per document (classification, cut) or per block (LM)
    text_length: int = 2_048
    # the attention: about how many keys a query of a sparse layer may see; each mechanism
    # derives its options from it (`SelfAttention.options_at`)
    reach: int = 256
    # registered mechanism name -> options over those it derives from `reach`
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the time/memory sweep: forward+backward of the same models on random tokens
    sweep_lengths: tuple[int, ...] = (512, 1024, 2048, 4096)
    sweep_batch: int = 1
    sweep_repeats: int = 3
    sweep_max_seconds: float = 60.0  # skip a length whose one fwd+bwd would take longer
    # zero-shot tasks (`Task.zero_shot`, `longseq.compare.zero_shot`): the pre-trained model
    # (None: the task's default, SmolLM2 converted from its installed GGUF), how many of the
    # task's documents are read (each to text_length tokens), the attention sinks given to
    # mechanisms with global tokens (0: none), and the report's bucket of positions
    pretrained: str | None = None
    documents: int = 2
    sinks: int = 4
    bucket: int = 1_024
    # where and how
    threads: int | None = 2  # torch threads per process (None: torch's default)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                low_ok = f.name in (
                    "dropout",
                    "weight_decay",
                    "warmup_steps",
                    "seed",
                    "sinks",
                    "conv_layers",
                )
                if value < 0 or (value == 0 and not low_ok):
                    raise ValueError(
                        f"preset {self.name!r}: {f.name} must be positive, got {value}"
                    )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"preset {self.name!r}: hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}"
            )
        if self.listops_max_length - self.listops_min_length < 2:
            raise ValueError(
                f"preset {self.name!r}: listops_min_length={self.listops_min_length} must be "
                f"at least 2 below listops_max_length={self.listops_max_length}"
            )
        if not self.sweep_lengths:
            raise ValueError(f"preset {self.name!r}: sweep_lengths is empty")
        self._check_options()

    def _check_options(self) -> None:
        for mechanism, opts in self.options.items():
            if not isinstance(opts, dict):
                raise ValueError(
                    f"preset {self.name!r}: options[{mechanism!r}] must map option names to "
                    f"values (e.g. options.{mechanism}.OPTION=VALUE), got {opts!r}"
                )
            # attention.options raises on unknown names, listing them; the model sets causal, ...
            valid = set(attention.options(mechanism)) - set(MODEL_OWNED)
            unknown = sorted(set(opts) - valid)
            if unknown:
                raise ValueError(
                    f"preset {self.name!r}: unknown option(s) {unknown} for {mechanism!r} "
                    f"attention; valid options: {', '.join(sorted(valid))}"
                )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["sweep_lengths"] = list(self.sweep_lengths)
        return out

    def with_overrides(self, items: list[str] | tuple[str, ...]) -> Preset:
        """A copy with `field=value` overrides (the CLI's --set), converted to the field's type;
        `options.MECHANISM.OPTION=value` sets one mechanism's option (the value read as YAML)."""
        hints = typing.get_type_hints(Preset)
        names = [
            f.name
            for f in dataclasses.fields(Preset)
            if f.name not in ("name", "summary", "options")
        ]
        changes: dict[str, Any] = {"options": copy.deepcopy(self.options)}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip().replace("-", "_")
            if sep and key.startswith("options."):
                apply_override(changes, item.strip())
            elif not sep or key not in names:
                raise ValueError(
                    f"--set {item!r}: expected FIELD=VALUE with FIELD one of: {', '.join(names)}, "
                    "or options.MECHANISM.OPTION=VALUE (e.g. options.lsh.n_hashes=4)"
                )
            else:
                changes[key] = _parse(text.strip(), hints[key], key)
        return dataclasses.replace(self, **changes)


def _parse(text: str, tp: Any, key: str) -> Any:
    """`text` as the annotated type of preset field `key` (int, float, str, optional, tuple)."""
    args = typing.get_args(tp)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        tp = next(a for a in args if a is not type(None))
    if typing.get_origin(tp) is tuple:
        return tuple(_parse(t, typing.get_args(tp)[0], key) for t in text.split(",") if t.strip())
    try:
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
    except ValueError:
        raise ValueError(f"--set {key}={text!r}: expected a {tp.__name__}") from None
    return text


# the stem's fields at their no-op values (no stem), read off the dataclass
STEM_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(Preset) if f.name.startswith("conv_")
}

PRESETS: dict[str, Preset] = {
    "recall": Preset(
        name="recall",
        summary="make run, about 6 minutes on 2 CPU cores: associative recall by distance, "
        "256 tokens, 2 seeds",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        dropout=0.0,
        pooling="mean",  # unused: recall labels every query token
        steps=400,
        batch_size=32,
        lr=3e-3,
        warmup_steps=50,
        eval_every=100,
        seeds=2,
        recall_length=256,
        reach=32,
        sweep_lengths=(256, 1024, 4096, 8192),
        sweep_batch=1,
        sweep_repeats=3,
        sweep_max_seconds=20.0,
    ),
    "default": Preset(
        name="default",
        summary="under 15 minutes on 2 CPU cores: a tiny model, ListOps of 100-500 tokens",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        dropout=0.0,
        steps=800,
        batch_size=16,
        lr=1e-3,
        warmup_steps=30,
        eval_every=100,
        listops_train=5_000,
        listops_val=300,
        listops_test=500,
        listops_min_length=100,
        listops_max_length=500,
        text_length=1_024,
        reach=128,
        sweep_lengths=(512, 1024, 2048, 4096, 8192),
        sweep_batch=1,
        sweep_repeats=3,
        sweep_max_seconds=20.0,
    ),
    "cpu": Preset(
        name="cpu",
        summary="a few hours on 2 CPU cores: the small LRA ListOps model at the full LRA lengths",
        hidden_size=64,
        num_layers=2,
        num_heads=2,
        intermediate_size=128,
        dropout=0.0,
        steps=3_000,
        batch_size=32,
        lr=1e-3,
        warmup_steps=300,
        eval_every=250,
        listops_train=96_000,
        listops_val=2_000,
        listops_test=2_000,
        listops_min_length=500,
        listops_max_length=2_000,
        text_length=2_048,
        reach=256,
        options={"bigbird": {"num_random_blocks": 3}},
        sweep_lengths=(1024, 2048, 4096, 8192, 16384),
        sweep_batch=1,
        sweep_repeats=3,
        sweep_max_seconds=60.0,
    ),
    "long-context": Preset(
        name="long-context",
        summary="zero-shot: SmolLM2-135M (8K trained) read to 16K tokens of 2 held-out plays "
        "with each causal mechanism (one 16K forward: minutes on 2 idle CPU cores)",
        # the model sizes are the pre-trained model's; these fields are unused
        hidden_size=576,
        num_layers=30,
        num_heads=9,
        intermediate_size=1_536,
        dropout=0.0,
        text_length=16_384,
        # a window of 1,024 earlier tokens (Longformer's window counts both sides: 2,048)
        reach=2_048,
        options={
            # 64-token blocks: a 16-block window behind each query (1,024 tokens), the first
            # block global (64 sinks), 2 random blocks
            "bigbird": {"num_sliding_blocks": 33, "num_global_blocks": 1, "num_random_blocks": 2},
            # Reformer's chunks, 2 rounds: each query sees the 256 latest keys of its buckets
            "lsh": {"chunk_length": 256, "n_hashes": 2},
        },
        documents=2,
        sinks=4,
        bucket=1_024,
        sweep_lengths=(16_384,),  # no sweep: the scoring times are reported instead
        threads=2,
    ),
    "genome": Preset(
        name="genome",
        summary="per-base DNA labelling (genome-cds, genome-bases): a convolutional stem, 8 "
        "bases per attention position; about 3 minutes a run on one idle CPU core",
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=256,
        dropout=0.1,
        # 4 convolutions of width 5 dilated 1, 2, 4, 8 see 61 bases; then 8 bases a position
        conv_layers=4,
        conv_kernel=5,
        conv_pool=8,
        conv_dilation=2,
        steps=500,
        batch_size=32,  # windows of text_length bases: 16,384 bases a step at every context
        lr=2e-3,
        warmup_steps=20,
        eval_every=100,
        text_length=512,  # bases
        reach=64,  # positions of 8 bases: a Longformer window of 512 bases
        sweep_lengths=(2_048, 4_096, 8_192, 16_384),
        threads=1,
    ),
    "lra": Preset(
        name="lra",
        summary="the Long Range Arena ListOps settings, for a GPU",
        hidden_size=512,
        num_layers=6,
        num_heads=8,
        intermediate_size=2_048,
        dropout=0.1,
        steps=5_000,
        batch_size=32,
        lr=3e-4,
        warmup_steps=1_000,
        weight_decay=0.1,
        eval_every=250,
        listops_train=96_000,
        listops_val=2_000,
        listops_test=2_000,
        listops_min_length=500,
        listops_max_length=2_000,
        text_length=4_096,
        reach=512,
        # the LRA paper's: BigBird's 3 random blocks, 4 LSH rounds
        options={"bigbird": {"num_random_blocks": 3}, "lsh": {"n_hashes": 4}},
        sweep_lengths=(1024, 2048, 4096, 8192, 16384),
        sweep_batch=1,
        sweep_repeats=5,
        sweep_max_seconds=60.0,
        threads=None,
    ),
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def mechanism_options(preset: Preset, mechanism: str, length: int) -> dict[str, Any]:
    """The attention options of `mechanism` under `preset` for sequences of up to `length`
    tokens (bases, with a stem: the attention sees length / conv_pool positions): what the
    mechanism derives from the preset's reach (`options_at`), under those the preset sets for
    it by name."""
    given = preset.options.get(mechanism, {})
    positions = -(-length // preset.conv_pool)
    return attention.get(mechanism).options_at(attention.At(positions, reach=preset.reach), given)


def stem_fields(preset: Preset) -> dict[str, int]:
    """The preset's convolutional stem as model fields; none (an empty dict) at the defaults,
    so the configs of runs without a stem read as before."""
    if all(getattr(preset, k) == STEM_DEFAULTS[k] for k in STEM_DEFAULTS):
        return {}
    return {k: getattr(preset, k) for k in STEM_DEFAULTS}


def describe_options(preset: Preset, mechanism: str, length: int) -> str:
    opts = mechanism_options(preset, mechanism, length)
    return ", ".join(f"{k} {v}" for k, v in opts.items() if k != "max_seq_len") or "-"


__all__ = [
    "PRESETS",
    "Preset",
    "default_mechanisms",
    "describe_options",
    "get",
    "mechanism_options",
    "stem_fields",
]
