"""Linformer attention (Wang et al., 2020): keys and values projected along the sequence axis.

For each head h, with E_h, F_h of shape (k, max_seq_len) and an n-token sequence (n <= max_seq_len)
using their first n columns:

    head_h = softmax(Q_h (E_h[:, :n] K_h)^T / sqrt(d)) (F_h[:, :n] V_h)

Q_h, K_h, V_h are (n, d). Every query scores k projected keys instead of n keys: time and memory
O(n k) instead of O(n^2).

Sharing of E, F (`sharing=`), as in the paper's section 4:
  "none"       separate E_h and F_h per head, (heads, k, max_seq_len) each
  "headwise"   one E and one F shared by all heads
  "kv"         one matrix used as both E and F, shared by all heads
  "layerwise"  as "kv", and shared by every layer of a model: build one `LinformerProjection` and
               pass it to every layer as `projection=`; without one, the layer makes its own
               (a lone layer then equals "kv").

`projection=` works with every sharing mode (it is how E, F are shared across layers); the
projection's shape must match the mode (`LinformerProjection.for_sharing` builds the right one).

Padding: the keys and values of padding tokens are zeroed before projecting and real tokens are
moved to the front (in order), so a real token at rank i always meets column i of E and F and a
padded sequence gives exactly the output of the sequence alone, whatever the mask.
Linformer cannot be causal: every projected key mixes all positions.

Initialisation as lucidrains' `linformer`: E, F ~ uniform(-1/sqrt(k), 1/sqrt(k)).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longseq.attention import ops, pictures
from longseq.attention.base import At, SelfAttention
from longseq.attention.shard import Shard

SHARING: tuple[str, ...] = ("none", "headwise", "kv", "layerwise")


class LinformerProjection(nn.Module):
    """The sequence-axis projections E (keys) and F (values) of Linformer attention.

    Shape (k, max_seq_len), or (heads, k, max_seq_len) with `heads` for one matrix per head.
    `share_kv=True` uses one matrix as both E and F. The defaults (heads=None, share_kv=True)
    are the "layerwise" projection: create one per model and pass it to every layer.
    """

    def __init__(
        self, k: int, max_seq_len: int, *, heads: int | None = None, share_kv: bool = True
    ) -> None:
        super().__init__()
        ops.check_int("k (projected length)", k, 1)
        ops.check_int("max_seq_len", max_seq_len, 1)
        if k > max_seq_len:
            raise ValueError(
                f"k={k} is larger than max_seq_len={max_seq_len}: projecting to more rows than "
                "the longest sequence has only adds cost; use k <= max_seq_len"
            )
        if heads is not None:  # None: shared by all heads
            ops.check_int("heads", heads, 1)
        self.k, self.max_seq_len, self.heads, self.share_kv = k, max_seq_len, heads, share_kv
        shape = (k, max_seq_len) if heads is None else (heads, k, max_seq_len)
        self.e = nn.Parameter(torch.empty(shape))
        self.f = None if share_kv else nn.Parameter(torch.empty(shape))
        self.reset_parameters()

    @classmethod
    def for_sharing(
        cls, sharing: str, k: int, max_seq_len: int, num_heads: int
    ) -> LinformerProjection:
        """The projection a layer with `sharing` uses (shape and E/F sharing)."""
        heads, share_kv = _layout(sharing, num_heads)
        return cls(k, max_seq_len, heads=heads, share_kv=share_kv)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.k)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def matrices(self, n: int) -> tuple[Tensor, Tensor]:
        """E and F restricted to the first n positions: (..., k, n) views, no copy."""
        f = self.e if self.f is None else self.f
        if n == self.max_seq_len:  # no slice: its backward would copy a full-size gradient
            return self.e, f
        return self.e[..., :n], f[..., :n]

    def extra_repr(self) -> str:
        return (
            f"k={self.k}, max_seq_len={self.max_seq_len}, heads={self.heads}, "
            f"share_kv={self.share_kv}"
        )


def _layout(sharing: str, num_heads: int) -> tuple[int | None, bool]:
    """(heads, share_kv) of the projection that `sharing` needs."""
    if sharing not in SHARING:
        raise ValueError(
            f"unknown sharing={sharing!r} for linformer attention; "
            f"valid values: {', '.join(map(repr, SHARING))}"
        )
    return (num_heads if sharing == "none" else None), sharing in ("kv", "layerwise")


def _project(m: Tensor, x: Tensor) -> Tensor:
    """m (k, n) or (H, k, n) applied along the sequence axis of x (B, H, n, D) -> (B, H, k, D)."""
    # one batched matmul over heads (and batch); shared m folds heads into the GEMM's columns
    return torch.einsum("kn,bhnd->bhkd" if m.dim() == 2 else "hkn,bhnd->bhkd", m, x)


def _project_at(m: Tensor, col: Tensor, x: Tensor) -> Tensor:
    """sum_j m[..., :, col[b, j]] x[b, :, j]: m (k, N) or (H, k, N), col (B, n), x (B, H, n, D)
    -> (B, H, k, D). The columns of each token, gathered per batch row."""
    if m.dim() == 2:
        cols = m[:, col]  # (k, B, n)
        return torch.einsum("kbn,bhnd->bhkd", cols, x)
    cols = m[:, :, col]  # (H, k, B, n)
    return torch.einsum("hkbn,bhnd->bhkd", cols, x)


class LinformerAttention(SelfAttention):
    """Linformer: each query attends to k learned projections of the keys/values (module doc)."""

    name = "linformer"
    sequence_parallel = True
    length_options = ("max_seq_len",)
    supports_causal: ClassVar[bool] = False
    flex_refusal = (
        "a Linformer query scores k projections of the whole sequence's keys (E K), not a "
        "subset of its keys, so no token mask exists; use backend='native'"
    )

    @classmethod
    def longified_options(
        cls, given: dict[str, Any], source_length: int, max_length: int
    ) -> dict[str, Any]:
        """k = the source's length N0 by default: the identity fold is then exact at n = N0
        (`longseq.convert.longify`); a max_seq_len shorter than max_length is refused."""
        seq_len = given.get("max_seq_len")
        if seq_len is not None and seq_len < max_length:
            raise ValueError(
                f"linformer max_seq_len={seq_len} < max_length={max_length}: inputs of "
                "max_length tokens would not fit; leave max_seq_len out (it defaults to "
                "max_length)"
            )
        return {"k": source_length, **given}

    @classmethod
    def options_at(cls, at: At, given: dict[str, Any]) -> dict[str, Any]:
        """max_seq_len n unless given. Under a reach, k = the reach, at most the paper's 256
        (enough at any length, its finding), and E, F shared by the heads (as lucidrains'
        linformer). A k not given (the reach's, the default 256) is at most n: projecting to
        more rows than the sequence has only adds cost; a given one is refused above it."""
        opts = {} if at.reach is None else {"k": min(256, at.reach), "sharing": "headwise"}
        opts.update(given)
        if "max_seq_len" not in opts:
            opts["max_seq_len"] = at.n
            if "k" not in given:
                opts["k"] = min(opts.get("k", 256), at.n)
        return opts

    def reach_bound(
        self, n: int, num_layers: int, *, samples: int = 400, seed: int = 0
    ) -> tuple[Tensor, Tensor, str]:
        """The query sees k mixtures of the n positions (E K, F V, E and F fixed once
        learned): k fixed rows single out at most k of n positions, so a pair at a random
        position is readable with probability <= k/n (low 0, high k/n)."""
        k = min(self.k, n)
        high = torch.full((n, n), min(1.0, k / n))
        return torch.zeros(n, n), high, f"rank k = {k}: at most k/n = {k}/{n} positions"

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        k: int = 256,
        max_seq_len: int = 4096,
        sharing: str = "none",
        projection: LinformerProjection | None = None,
        causal: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
        num_key_value_heads: int | None = None,
        backend: str = "native",
    ) -> None:
        if causal:
            raise ValueError(
                "'linformer' attention cannot be causal (causal=True): its projections E, F mix "
                "all positions, so every projected key would see the future; use a causal "
                "mechanism instead, e.g. 'full', 'longformer', 'bigbird' or 'lsh' with causal=True"
            )
        heads, share_kv = _layout(sharing, num_heads)
        super().__init__(
            hidden_size,
            num_heads,
            causal=causal,
            dropout=dropout,
            bias=bias,
            num_key_value_heads=num_key_value_heads,
            backend=backend,
        )
        if projection is None:
            projection = LinformerProjection(k, max_seq_len, heads=heads, share_kv=share_kv)
        elif not isinstance(projection, LinformerProjection):
            raise TypeError(
                f"projection must be a LinformerProjection or None, got {type(projection).__name__}"
            )
        elif (projection.k, projection.max_seq_len, projection.heads, projection.share_kv) != (
            k,
            max_seq_len,
            heads,
            share_kv,
        ):
            raise ValueError(
                f"projection ({projection.extra_repr()}) does not match this layer (k={k}, "
                f"max_seq_len={max_seq_len}, sharing={sharing!r}), which needs k={k}, "
                f"max_seq_len={max_seq_len}, heads={heads}, share_kv={share_kv}; build it with "
                f"LinformerProjection.for_sharing({sharing!r}, {k}, {max_seq_len}, {num_heads}) "
                "or pass the projection's k and max_seq_len to the layer"
            )
        self.k, self.max_seq_len, self.sharing = k, max_seq_len, sharing
        self.projection = projection

    def attend(self, hidden_states: Tensor, real: Tensor, glob: Tensor | None) -> Tensor:
        # traced (longseq.convert.program): every key is projected, padding as zero keys
        padded = ops.tracing() or not bool(real.all())
        # trailing padding contributes nothing: only the longest real length is projected
        n = int(real.sum(dim=1).max()) if padded and not ops.tracing() else hidden_states.shape[1]
        if n > self.max_seq_len:
            raise ValueError(
                f"sequence length {n} exceeds max_seq_len={self.max_seq_len} of linformer "
                f"attention (E and F have {self.max_seq_len} columns); build the layer with "
                f"max_seq_len >= {n}"
            )
        q, k, v = self.project(hidden_states)
        if padded:
            keep = real[:, None, :, None]
            k, v = k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
            if ops.tracing() or not bool((real[:, 1:] <= real[:, :-1]).all()):
                # padding before a real token: move real tokens to the front, in order, so
                # real token i meets column i of E, F as it does in the sequence alone
                order = ops.front(real)
                idx = order[:, None, :, None].expand_as(k)
                k, v = k.gather(2, idx), v.gather(2, idx)
            k, v = k[:, :, :n], v[:, :, :n]
        if ops.tracing():  # zero keys up to max_seq_len: all of E, F, no length-shaped slice
            n = self.max_seq_len
            k, v = (ops.pad_to_length(t, n, dim=2) for t in (k, v))
        e, f = self.projection.matrices(n)
        pk, pv = _project(e, k), _project(f, v)  # (B, H, k, D)
        p = self.dropout if self.training else 0.0
        # q is pre-scaled; no mask: every projected key is valid for every query
        return F.scaled_dot_product_attention(q, pk, pv, dropout_p=p, scale=1.0)

    def attend_sharded(
        self, hidden_states: Tensor, real: Tensor, glob: Tensor | None, shard: Shard
    ) -> Tensor:
        """E K and F V are sums over the real tokens, the i-th real token of the whole sequence
        meeting column i of E and F: each rank sums its own tokens' terms (their columns follow
        the real tokens of the earlier ranks), then one all-reduce."""
        q, k, v = self.project(hidden_states)
        counts = shard.gather(real.sum(1, keepdim=True).to(q.dtype), 1).long()  # (B, W)
        before = counts[:, : shard.rank].sum(1, keepdim=True)
        col = before + real.long().cumsum(1) - 1  # (B, n): column of each real token
        longest = int(counts.sum(1).max())
        if longest > self.max_seq_len:
            raise ValueError(
                f"sequence length {longest} exceeds max_seq_len={self.max_seq_len} of "
                "linformer attention; build the layer with a larger max_seq_len"
            )
        e, f = self.projection.matrices(self.max_seq_len)
        col = col.clamp(min=0).masked_fill(~real, 0)
        keep = real[:, None, :, None]
        k, v = k.masked_fill(~keep, 0.0), v.masked_fill(~keep, 0.0)
        pk = shard.total_sum(_project_at(e, col, k))
        pv = shard.total_sum(_project_at(f, col, v))
        p = self.dropout if self.training else 0.0
        return F.scaled_dot_product_attention(q, pk, pv, dropout_p=p, scale=1.0)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, k={self.k}, max_seq_len={self.max_seq_len}, "
            f"sharing={self.sharing!r}"
        )

    @classmethod
    def picture(cls, n: int) -> pictures.Picture:
        """No token mask: |E| and |F| (k = n/4 rows, at initialisation), the keys that feed
        each projected row, and the n x k pairs every query scores."""
        k = max(1, n // 4)
        layer = cls(pictures.HIDDEN, pictures.HEADS, k=k, max_seq_len=n, sharing="headwise")
        e, f = (m.detach().abs() for m in layer.projection.matrices(n))
        if e.ndim == 3:  # one matrix per head: show head 0
            e, f = e[0], f[0]
        pic = pictures.Picture(
            cls.name,
            f"Linformer (n={n}, k={k}, sharing=headwise): keys and values "
            "projected along the sequence to k rows",
            note="No token mask: projected key i = sum_j E[i, j] k_j mixes ALL n keys, and "
            "every query attends to all k projected keys (E, F shown at initialisation: "
            "uniform ±1/sqrt(k); training learns them).",
        )
        for label, m in (("E (keys)", e), ("F (values)", f)):
            title = f"|{label}|, k x n: which keys feed\neach projected row"
            kw = {"xlabel": "key position j", "ylabel": "projected row i (of k)"}
            pic.panels.append(pictures.Panel(title, m, colorbar="|weight|", **kw))
        title = f"queries x projected keys, n x k\nall {n * k} pairs scored (vs {n * n} for full)"
        every = torch.ones(n, k, dtype=torch.long)
        pic.panels.append(
            pictures.Panel(title, every, {1: "scored"}, xlabel="projected key (of k)")
        )
        return pic


__all__ = ["SHARING", "LinformerAttention", "LinformerProjection"]
