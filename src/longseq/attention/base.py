"""The layer every mechanism shares: projections, input checks, output projection.

A mechanism subclasses `SelfAttention` and implements `attend`, which maps the hidden states
(already checked, padding positions zeroed) to the per-head context `(batch, heads, seq,
head_dim)`. Padding positions of the output are set to zero, so what they hold never depends
on the mechanism, and what padding holds on input (even NaN) never reaches a real output.

Grouped-query attention (`num_key_value_heads` = KV < H, Ainslie et al. 2023; Llama 2/3,
SmolLM2): the key and value projections have KV * head_dim outputs, and query head i reads
key/value head i // (H / KV). `project` expands them to the H query heads for the kernels;
incremental caches store the KV heads only and expand at attention time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from longseq.attention import ops, pictures
from longseq.attention.cache import AttentionCache
from longseq.attention.shard import Shard


@dataclass(frozen=True)
class At:
    """Where a layer's options are asked for (`SelfAttention.options_at`): sequences of up to
    `n` tokens; `reach`: a budget of about that many keys per query (`longseq compare`'s
    presets, the pictures); `layer`: its index in a model; `causal`: a causal model's layer."""

    n: int
    reach: int | None = None
    layer: int | None = None
    causal: bool = False


class SelfAttention(nn.Module):
    """Multi-head self-attention; subclasses choose which (query, key) pairs are scored."""

    name: ClassVar[str] = "base"
    baseline: ClassVar[bool] = False  # the mechanism the others are measured against
    sequence_parallel: ClassVar[bool] = False  # has an `attend_sharded` (attention/shard.py)
    supports_causal: ClassVar[bool] = True
    supports_global: ClassVar[bool] = False
    shared_qk: ClassVar[bool] = False  # Reformer: one projection for queries and keys
    compared: ClassVar[bool] = True  # among the mechanisms `longseq compare` runs by default
    # options that size a layer for a length rather than define its pattern (longify resets
    # them for the new length)
    length_options: ClassVar[tuple[str, ...]] = ()
    # the first `global_tokens` positions are global (a layer option of the mechanisms that
    # have token-level global tokens; under a causal mask they are attention sinks)
    global_tokens: int = 0

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        num_key_value_heads: int | None = None,
    ) -> None:
        super().__init__()
        if hidden_size <= 0 or num_heads <= 0:
            raise ValueError("hidden_size and num_heads must be positive")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_heads={num_heads}")
        if causal and not self.supports_causal:
            raise ValueError(f"'{self.name}' attention cannot be causal (causal=True)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        kv = num_heads if num_key_value_heads is None else num_key_value_heads
        check_kv_heads(kv, num_heads, self.shared_qk, self.name)
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_key_value_heads = kv
        self.kv_groups = num_heads // kv  # query heads per key/value head
        self.head_dim = hidden_size // num_heads
        self.causal = causal
        self.dropout = dropout
        kv_size = kv * self.head_dim
        self.query = nn.Linear(hidden_size, hidden_size, bias=bias)
        if not self.shared_qk:
            self.key = nn.Linear(hidden_size, kv_size, bias=bias)
        self.value = nn.Linear(hidden_size, kv_size, bias=bias)
        self.out = nn.Linear(hidden_size, hidden_size, bias=bias)
        # Optional (q, k) -> (q, k) position transform applied in `project`, e.g. the model's
        # rotary embedding. Kept duck-typed so `attention` never imports `layers`.
        self.rotary: Callable[..., tuple[Tensor, Tensor]] | None = None

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """The options of this mechanism's layer `at` a length: `given` completed with what the
        mechanism derives (the one hook for options at a length; given options win, except a
        model's layer index). From `at.reach`, where set: its own settings for a budget of
        about that many keys per query (`longseq compare`'s presets, the pictures); from `at.n`
        (Linformer's max_seq_len); from `at.layer` (BigBird's random blocks); from `at.causal`
        (causal LSH's fixed bucket count)."""
        return dict(given)

    @classmethod
    def longified_options(
        cls, given: dict[str, Any], source_length: int, max_length: int
    ) -> dict[str, Any]:
        """The options of a layer of a model longified from `source_length` to `max_length`
        tokens (`longseq.convert.longify`): `given` checked and completed with what makes the
        longified layer exact where it can be."""
        return dict(given)

    @property
    def length_multiple(self) -> int:
        """Lengths that are a multiple of this need no padding inside the layer (1: any)."""
        return 1

    def dense_up_to(self, limit: int) -> int:
        """Largest n <= limit for which this layer's pattern is full attention (causal: the
        lower triangle) for every head, so that it computes what dense attention with the
        same weights does; 0 when no n is (`longseq.convert.longify`'s exactness)."""
        return 0

    def reach_bound(
        self, n: int, num_layers: int, *, samples: int = 400, seed: int = 0
    ) -> tuple[Tensor, Tensor, str]:
        """(low, high, basis): for a mechanism that is not a fixed token mask, the probability
        bounds (n, n) that query q can read position p in a model of `num_layers` such layers
        (`longseq.compare.predict`; mask mechanisms are computed from `pattern`)."""
        raise NotImplementedError(f"'{self.name}' has no reach model")

    def forward(
        self,
        hidden_states: Tensor,
        attention_mask: Tensor | None = None,
        global_attention_mask: Tensor | None = None,
        *,
        cache: AttentionCache | None = None,
        positions: Tensor | None = None,
        shard: Shard | None = None,
    ) -> Tensor:
        """(batch, seq, hidden) -> (batch, seq, hidden); masks are (batch, seq) of 0/1.

        Incremental decoding (causal layers): `cache` from `new_cache()` holds the past, the
        input is the next tokens of each row at `positions` (batch, seq), and
        `attention_mask` marks the ones that exist. See `longseq.attention.cache`."""
        ops.check_hidden(hidden_states, self.hidden_size)
        if cache is not None:
            if positions is None or tuple(positions.shape) != tuple(hidden_states.shape[:2]):
                raise ValueError("a cached call needs positions of shape (batch, seq)")
            if global_attention_mask is not None:
                raise ValueError("cached (causal) decoding has no global tokens")
        # a shard, or a cache's next tokens, is part of a sequence: a row may have no real token
        real, glob = ops.check_masks(
            hidden_states,
            attention_mask,
            global_attention_mask,
            self.supports_global,
            self.name,
            allow_empty=cache is not None or shard is not None,
        )
        if self.global_tokens and cache is None:  # a cache keeps the sinks itself
            start = 0 if shard is None else shard.start
            glob = ops.first_tokens(real, glob, self.global_tokens, start)
        if attention_mask is not None:  # whatever padding holds (even NaN) stays out
            hidden_states = hidden_states.masked_fill(~real.unsqueeze(-1), 0.0)
        if cache is not None:
            context = self.attend_cached(hidden_states, cache, positions, real)
        elif shard is not None:  # this rank's part of a sequence split over processes
            context = self.attend_sharded(hidden_states, real, glob, shard)
        else:
            context = self.attend(hidden_states, real, glob)
        out = self.out(ops.merge_heads(context))
        return out if attention_mask is None else out.masked_fill(~real.unsqueeze(-1), 0.0)

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """Per-head context of this rank's shard of a sequence split over processes (see
        `attention/shard.py`), equal to the single-process layer's there."""
        raise ValueError(
            f"'{self.name}' attention has no sequence-parallel form; use one of the mechanisms "
            "longseq.attention.sequence_parallel() lists"
        )

    def _window_sharded(
        self, hidden_states: Tensor, real: Tensor, shard: Shard, left: int, right: int
    ) -> Tensor:
        """A mechanism whose pattern depends on position differences within `left` before
        and `right` after: its own `attend` on [halo, shard, halo]. The stretch's rows are
        positions 0.. to `attend`, not shard.start - left..: the pattern and rotary scores
        (q_i . k_j rotated by i - j) depend on differences only, so the shift changes nothing
        but rounding (less of it: smaller angles)."""
        n = hidden_states.shape[1]
        x, (ok,) = shard.halo_with_masks(hidden_states, [real], left, right)
        x = x.masked_fill(~ok.unsqueeze(-1), 0.0)
        return self.attend(x, ok, None)[:, :, left : left + n]

    def project(
        self, hidden_states: Tensor, positions: Tensor | None = None, *, expand: bool = True
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (pre-scaled by 1/sqrt(head_dim)), keys, values as (B, H, N, D); the
        position transform (rotary) at `positions` (B, N), by default 0 .. N - 1.
        `expand=False`: keys and values keep their KV heads, (B, KV, N, D) (for caches)."""
        q = ops.split_heads(self.query(hidden_states), self.num_heads) * self.head_dim**-0.5
        k = ops.split_heads(self.key(hidden_states), self.num_key_value_heads)
        v = ops.split_heads(self.value(hidden_states), self.num_key_value_heads)
        if self.rotary is not None:
            q, k = self.rotary(q, k, positions=positions)
        if expand:
            k, v = ops.repeat_kv(k, self.kv_groups), ops.repeat_kv(v, self.kv_groups)
        return q, k, v

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        """Per-head context (B, H, N, D). `real` (B, N) bool; `glob` (B, N) bool or None."""
        raise NotImplementedError

    # ------------------------------------------------------------------ incremental decoding

    def new_cache(self) -> AttentionCache:
        """An empty cache for decoding this causal layer token by token, exactly: its output
        at every step equals the layer's forward over the whole sequence so far."""
        raise ValueError(f"'{self.name}' attention has no incremental cache")

    def _check_cacheable(self) -> None:
        if not self.causal:
            raise ValueError(
                f"'{self.name}' layer is not causal: an incremental cache needs causal=True "
                "(a bidirectional layer's outputs change as tokens are added)"
            )

    def attend_cached(
        self, hidden_states: Tensor, cache: AttentionCache, positions: Tensor, real: Tensor
    ) -> Tensor:
        """Per-head context (B, H, C, D) of C new tokens at `positions`, through `cache`
        (which keeps the KV heads)."""
        q, k, v = self.project(hidden_states, positions, expand=False)
        return cache.attend(q, k, v, positions, real)

    def pattern(self, n: int, is_global: Tensor | None = None) -> Tensor:
        """(heads, n, n) bool: which keys each query of an n-token sequence may see.

        Defined by mask-based mechanisms from `patterns.py`; used by tests and pictures.
        """
        raise NotImplementedError(f"'{self.name}' attention is not defined by a token mask")

    def extra_repr(self) -> str:
        kv = self.num_key_value_heads
        grouped = f", num_key_value_heads={kv}" if kv != self.num_heads else ""
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}{grouped}, "
            f"causal={self.causal}"
        )

    @classmethod
    def picture(cls, n: int) -> pictures.Picture:
        """What `longseq patterns` draws for this mechanism at n tokens. By default its token
        mask `pattern(n)` (a pair any head scores), bidirectional and causal, with the options
        `options_at` derives from a reach scaled to n. A mechanism whose pattern has parts to
        tell apart, or that has no token mask, overrides it (see `attention/pictures.py`)."""
        opts = cls.options_at(At(n, reach=pictures.reach(n)), {})
        pic = pictures.Picture(cls.name, f"{cls.name} attention (n={n}; {pictures.describe(opts)})")
        for causal in (False, True) if cls.supports_causal else (False,):
            layer = cls(pictures.HIDDEN, pictures.HEADS, causal=causal, **opts)
            mask = layer.pattern(n).any(0)
            pic.panels.append(pictures.mask_panel(f"{cls.name}, causal={causal}", mask))
        return pic


def check_kv_heads(kv: int, num_heads: int, shared_qk: bool = False, name: str = "") -> None:
    """`num_key_value_heads` must divide the query heads; a mechanism whose keys are its
    queries (shared_qk) has as many key heads as query heads."""
    if isinstance(kv, bool) or not isinstance(kv, int) or kv <= 0 or num_heads % kv:
        raise ValueError(
            f"num_key_value_heads must be a positive divisor of num_heads={num_heads} (each "
            f"key/value head serves num_heads / num_key_value_heads query heads), got {kv!r}"
        )
    if shared_qk and kv != num_heads:
        raise ValueError(
            f"'{name}' attention shares one projection for queries and keys, so its keys have "
            f"num_heads={num_heads} heads: grouped-query attention (num_key_value_heads={kv}) "
            "has no meaning there; set num_key_value_heads to num_heads or choose another "
            "mechanism"
        )


__all__ = ["At", "SelfAttention", "check_kv_heads"]
