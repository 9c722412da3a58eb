"""The one configuration of every longseq model: a dataclass that round-trips through JSON.

`attention` picks the mechanism for every layer (any name in `longseq.attention.mechanisms()`)
and `attention_options` its options (`longseq.attention.options(name)` lists them);
`layer_attention` optionally overrides both per layer, e.g. Longformer windows that grow with
depth, or Reformer's alternating local / LSH layers:

    ModelConfig(attention="longformer", attention_options={"window": 128},
                layer_attention=[{"window": 64}, {"window": 128}, {"window": 256}])
    ModelConfig(attention="lsh", layer_attention=[{"attention": "longformer", "window": 64}, {}])

`architecture` names the head (see `ARCHITECTURES`); the causal LM makes every layer causal.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longseq import attention
from longseq.layers.norms import NORM_TYPES
from longseq.layers.stem import ConvStem

ARCHITECTURES: tuple[str, ...] = (
    "encoder",
    "sequence-classification",
    "token-classification",
    "question-answering",
    "masked-lm",
    "causal-lm",
)
POSITIONS: tuple[str, ...] = ("learned", "rotary", "axial", "none")
NORMS: tuple[str, ...] = ("pre", "post")
POOLINGS: tuple[str, ...] = ("mean", "cls")
REVERSIBLE_OUTPUTS: tuple[str, ...] = ("mean", "concat")
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "relu", "silu")
FEED_FORWARDS: tuple[str, ...] = ("plain", "gated")  # gated: act(Wg x) * W1 x (SwiGLU)
# question answering: a linear layer on the body's states, or BigBird's head (an extra block,
# and the question left out of the span and given segment 0: HF's BigBirdForQuestionAnswering)
QA_HEADS: tuple[str, ...] = ("linear", "bigbird")
# Options the model sets itself from other fields; a user must not set them per mechanism.
MODEL_OWNED = ("causal", "dropout", "bias", "layer_idx", "num_key_value_heads", "global_tokens")


# Integer fields (a "32" or 32.0 from a hand-edited config.json is an error, not a crash)
INT_FIELDS: tuple[str, ...] = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_length",
    "position_offset",
    "type_vocab_size",
    "pad_token_id",
    "cls_token_id",
    "num_labels",
    "global_tokens",
    "conv_layers",
    "conv_kernel",
    "conv_pool",
    "conv_dilation",
)
MAX_TENSOR_ELEMENTS = 2**33  # 32 GiB in fp32: far beyond any real model's embedding table


@dataclass
class ModelConfig:
    """Every field has a default, so `ModelConfig(attention="bigbird")` is a working model."""

    architecture: str = "encoder"
    # sizes
    vocab_size: int = 260  # ByteTokenizer: 4 specials + 256 bytes
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_key_value_heads: int | None = None  # grouped-query attention (None: num_heads)
    intermediate_size: int = 1024
    max_length: int = 4096
    # attention
    attention: str = "full"
    attention_options: dict[str, Any] = field(default_factory=dict)
    layer_attention: list[dict[str, Any]] | None = None
    causal_attention: bool = False  # causal layers under any head (causal-lm always is)
    # positions: learned absolute, rotary (in q/k), Reformer's axial, or none
    position: str = "learned"
    position_offset: int = 0  # RoBERTa-family checkpoints start real positions at 2
    axial_shape: list[int] | None = None
    axial_dims: list[int] | None = None
    rotary_base: float = 10000.0
    type_vocab_size: int = 0  # BERT's segment embeddings (0: none)
    # block structure
    norm: str = "pre"  # pre-LN (stable from scratch) or post-LN (BERT/RoBERTa checkpoints)
    norm_type: str = "layer"  # every norm a LayerNorm, or an RMSNorm (Llama)
    embedding_norm: bool = False  # LayerNorm right after the embeddings (BERT: True)
    layer_norm_eps: float = 1e-5
    activation: str = "gelu"
    feed_forward: str = "plain"  # plain: W2 act(W1 x); gated: W2 (act(Wg x) * W1 x) (Llama)
    bias: bool = True  # biases in the attention projections
    feed_forward_bias: bool = True  # biases in the feed-forward's projections
    dropout: float = 0.1
    attention_dropout: float = 0.0
    # memory savers
    reversible: bool = False
    reversible_output: str = "mean"  # how the two streams merge: mean (width h) or concat (2h)
    feed_forward_chunk_size: int | None = None
    gradient_checkpointing: bool = False
    # tokens and heads
    pad_token_id: int = 0
    cls_token_id: int = 1
    # the separator; set, a QA head with global tokens makes the question (the tokens before
    # the first separator) global when no global_attention_mask is given, as HF's Longformer
    sep_token_id: int | None = None
    tie_word_embeddings: bool = True
    output_bias: bool = True  # a bias in the LM heads' output projection (Llama: none)
    lm_transform: bool = False  # BERT's MLM head: dense -> act -> LayerNorm before the decoder
    num_labels: int = 2
    label_names: list[str] | None = None
    pooling: str = "mean"  # sequence classification: mean over real tokens, or the first token
    classifier_dense: bool = False  # dense + tanh before the classifier (BERT/RoBERTa heads)
    classifier_activation: str = "tanh"  # after that dense (BigBird: its hidden_act)
    global_cls: bool = True  # mechanisms with global tokens make the first token global
    qa_head: str = "linear"  # QA_HEADS ("bigbird" needs sep_token_id)
    # the first G positions are global in every layer whose mechanism has global tokens
    # (Longformer); under a causal mask they are attention sinks (StreamingLLM)
    global_tokens: int = 0
    # a convolutional stem before the blocks (`longseq.layers.stem`, for DNA one base per
    # token): conv_layers residual convolutions of width conv_kernel over the embeddings, then
    # conv_pool inputs per attention position (the output comes back to one per input)
    conv_layers: int = 0
    conv_kernel: int = 9
    conv_pool: int = 1
    conv_dilation: int = 1  # stem layer l is dilated by conv_dilation ** l (WaveNet)
    init_std: float = 0.02

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Every check, before anything is allocated: choices, types and sizes, the body's
        options, positions, and each layer's attention."""
        self._check_choices()
        self._check_types_and_sizes()
        self._check_body()
        self._check_positions()
        for i in range(self.num_layers):
            self._check_layer(i)

    def _check_choices(self) -> None:
        for name, valid in (
            ("architecture", ARCHITECTURES),
            ("position", POSITIONS),
            ("norm", NORMS),
            ("norm_type", NORM_TYPES),
            ("feed_forward", FEED_FORWARDS),
            ("pooling", POOLINGS),
            ("reversible_output", REVERSIBLE_OUTPUTS),
            ("activation", ACTIVATIONS),
            ("classifier_activation", ("tanh", *ACTIVATIONS)),
            ("qa_head", QA_HEADS),
        ):
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")

    def _check_types_and_sizes(self) -> None:
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        for name in ("dropout", "attention_dropout", "layer_norm_eps", "init_std"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
        positive = ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        for name in (*positive, "max_length", "num_labels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        # sizes are checked before any tensor is allocated (1e12 embeddings would try to)
        for name, size in (
            ("vocab_size x hidden_size", self.vocab_size * self.hidden_size),
            ("max_length x hidden_size", self.max_length * self.hidden_size),
            ("hidden_size x intermediate_size", self.hidden_size * self.intermediate_size),
        ):
            if size > MAX_TENSOR_ELEMENTS:
                raise ValueError(
                    f"{name} = {size:,} weights in one tensor: more than the "
                    f"{MAX_TENSOR_ELEMENTS:,} allowed; check the config's sizes"
                )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")

    def _check_body(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.num_key_value_heads is not None:
            attention.check_kv_heads(self.num_key_value_heads, self.num_heads)
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(
                f"{len(self.label_names)} label_names given but num_labels={self.num_labels}"
            )
        sep = self.sep_token_id
        if sep is not None and (isinstance(sep, bool) or not isinstance(sep, int)):
            raise ValueError(f"sep_token_id must be an integer or null, got {sep!r}")
        if sep is not None and not 0 <= sep < self.vocab_size:
            raise ValueError(f"sep_token_id={sep} outside vocab_size")
        if self.qa_head == "bigbird" and sep is None:
            raise ValueError("qa_head='bigbird' finds the question by sep_token_id: set it")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id={self.pad_token_id} outside vocab_size")
        if self.reversible and self.norm != "pre":
            raise ValueError(
                "reversible layers need norm='pre' (each half-step normalises its input)"
            )
        if self.reversible and self.gradient_checkpointing:
            raise ValueError("reversible and gradient_checkpointing both recompute; choose one")
        lm = self.architecture in ("masked-lm", "causal-lm")
        concat = self.reversible and self.reversible_output == "concat"
        if concat and self.tie_word_embeddings and lm:
            raise ValueError(
                "reversible_output='concat' gives width 2 * hidden_size, which cannot be "
                "tied to the embeddings; set tie_word_embeddings=False"
            )
        if self.global_tokens < 0:
            raise ValueError(f"global_tokens must be >= 0, got {self.global_tokens}")
        if self.global_tokens:
            self._check_global_tokens()
        if self.stem:
            self._check_stem()
        if self.layer_attention is not None and len(self.layer_attention) != self.num_layers:
            raise ValueError(
                f"layer_attention has {len(self.layer_attention)} entries but num_layers="
                f"{self.num_layers}"
            )

    def _check_stem(self) -> None:
        ConvStem.check(self.conv_layers, self.conv_kernel, self.conv_pool, self.conv_dilation)
        if self.causal:
            raise ValueError(
                "a convolutional stem (conv_layers, conv_pool) sees both sides of each input: "
                "it is for encoders, not causal models"
            )
        if self.conv_pool > 1 and self.type_vocab_size:
            raise ValueError("conv_pool > 1 cannot pool segment embeddings; type_vocab_size=0")

    def _check_global_tokens(self) -> None:
        """Some layer must have token-level global tokens (the others ignore the setting)."""
        names = {self.layer_spec(i)[0] for i in range(self.num_layers)}
        if not any("global_tokens" in attention.options(m) for m in names):
            takers = [m for m in attention.mechanisms() if "global_tokens" in attention.options(m)]
            raise ValueError(
                f"global_tokens={self.global_tokens}, but no layer of this model has global "
                f"tokens (attention {', '.join(sorted(names))}); mechanisms that have them: "
                f"{', '.join(takers)}. BigBird's global tokens are whole blocks: its first "
                "num_global_blocks blocks (causal) already act as sinks"
            )

    def _check_positions(self) -> None:
        if self.position == "axial":
            if not self.axial_shape or not self.axial_dims:
                raise ValueError("position='axial' needs axial_shape and axial_dims (pairs)")
            a, b = self.axial_shape
            if a * b < self.positions_length:
                raise ValueError(
                    f"axial_shape {self.axial_shape} holds {a * b} positions < "
                    f"{self.positions_length} (max_length / conv_pool)"
                )
            if sum(self.axial_dims) != self.hidden_size:
                raise ValueError(
                    f"axial_dims {self.axial_dims} must sum to hidden_size={self.hidden_size}"
                )
        if self.position == "rotary" and (self.hidden_size // self.num_heads) % 2:
            raise ValueError("position='rotary' needs an even head dimension")

    def _check_layer(self, i: int) -> None:
        name, opts = self.layer_spec(i)
        cls = attention.get(name)  # raises on unknown names, listing the valid ones
        owned = sorted(set(opts) & set(MODEL_OWNED))
        if owned:
            raise ValueError(
                f"layer {i}: attention option(s) {owned} are set by the model config "
                "(architecture, attention_dropout, bias, layer index)"
            )
        valid = attention.options(name)
        unknown = sorted(set(opts) - set(valid))
        if unknown:
            raise ValueError(
                f"layer {i}: unknown option(s) {unknown} for {name!r} attention; valid "
                f"options: {', '.join(sorted(set(valid) - set(MODEL_OWNED)))}"
                f"{attention.port_hint(name, {k: opts[k] for k in unknown})}"
            )
        if self.causal and not cls.supports_causal:
            causal = [m for m in attention.mechanisms() if attention.get(m).supports_causal]
            raise ValueError(
                f"layer {i}: {name!r} attention has no causal form, so it cannot be used in "
                f"a causal-lm or with causal_attention; choose one of: {', '.join(causal)}"
            )
        if self.grouped:
            attention.check_kv_heads(self.kv_heads, self.num_heads, cls.shared_qk, name)
            if "num_key_value_heads" not in attention.options(name):
                raise ValueError(
                    f"layer {i}: {name!r} attention has no grouped-query form "
                    f"(num_key_value_heads={self.num_key_value_heads} < num_heads); set "
                    "num_key_value_heads to null or choose another mechanism"
                )

    # ----------------------------------------------------------------------------- derived
    @property
    def causal(self) -> bool:
        return self.architecture == "causal-lm" or self.causal_attention

    @property
    def stem(self) -> bool:
        """A convolutional stem runs before the blocks."""
        return bool(self.conv_layers) or self.conv_pool != 1

    @property
    def positions_length(self) -> int:
        """The most positions the blocks see: max_length inputs, conv_pool per position."""
        return -(-self.max_length // self.conv_pool)

    @property
    def kv_heads(self) -> int:
        """Key/value heads of every layer (num_heads unless grouped-query)."""
        return self.num_heads if self.num_key_value_heads is None else self.num_key_value_heads

    @property
    def grouped(self) -> bool:
        """Grouped-query attention: fewer key/value heads than query heads."""
        return self.kv_heads != self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def output_size(self) -> int:
        """Width of the final hidden states (2 * hidden for a concatenated reversible stack)."""
        if self.reversible and self.reversible_output == "concat":
            return 2 * self.hidden_size
        return self.hidden_size

    def layer_spec(self, i: int) -> tuple[str, dict[str, Any]]:
        """(mechanism, options) of layer i: the model-wide ones updated by the layer's override."""
        opts = dict(self.attention_options)
        name = self.attention
        if self.layer_attention is not None:
            override = dict(self.layer_attention[i])
            if "attention" in override:
                new = override.pop("attention")
                if new != name:
                    opts = {}  # the model-wide options belong to the model-wide mechanism
                name = new
            opts.update(override)
        return name, opts

    # ----------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(
                f"unknown model config field(s) {unknown}; valid fields: {', '.join(sorted(names))}"
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"model config is not valid JSON: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no model config at {path}")
        return cls.from_json(path.read_text())

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


__all__ = ["ARCHITECTURES", "FEED_FORWARDS", "MODEL_OWNED", "POSITIONS", "ModelConfig"]
