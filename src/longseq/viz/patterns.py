"""Pictures of the attention patterns: which (query, key) pairs each mechanism scores.

    longseq patterns --out DIR [--n 64]

One PNG per mechanism and a combined sheet, in the style of the Longformer and BigBird papers'
figures. Every picture is computed from the layers themselves, never redrawn by hand:

- full, Longformer, BigBird: `layer.pattern(n)` (from `attention.patterns`), split into its
  parts (window / global, sliding / global / random) by colour. Longformer's global part comes
  from the global-token mask, BigBird's parts from `patterns.bigbird_layout` (the slots of each
  query block), and the union of the parts is checked against `layer.pattern(n)`.
- Linformer: no token mask exists (every query sees k mixtures of all keys); drawn as |E| and
  |F|, the (k x n) projections that make the k keys and values.
- LSH: `layer.scored_pairs(x)` on an input with structure (tokens drawn around a few centres,
  shuffled), coloured by how many hashing rounds scored each pair, in token order and in the
  sorted (bucket, position) order of the first round, where the chunks appear.
- any other registered mechanism (local attention, a new one): its `layer.pattern(n)`,
  bidirectional and causal, with the options its `compare_options` gives at a budget scaled
  to n (`mask_figure`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from longseq import attention

HIDDEN, HEADS = 64, 2
WHITE = "#ffffff"
BLUE, RED, GREEN, ORANGE = "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"


@dataclass
class Panel:
    """One image: categories (int, 0 = not scored) with a legend, or a heat map."""

    title: str
    image: np.ndarray
    categories: dict[int, tuple[str, str]] | None = None  # value -> (label, colour)
    cmap: str = "viridis"
    colorbar: str = ""
    xlabel: str = "key position"
    ylabel: str = "query position"
    grid: int = 0  # draw lines every `grid` cells (blocks, chunks)
    vmax: float | None = None
    yticks: list[int] | None = None


@dataclass
class Figure:
    name: str
    title: str
    panels: list[Panel] = field(default_factory=list)
    note: str = ""  # one line under the figure


def _density(mask: np.ndarray) -> str:
    return f"{100 * float((mask > 0).mean()):.0f}% of pairs"


def _mask_panel(title: str, mask: Tensor, **kw: Any) -> Panel:
    m = mask.numpy().astype(np.int64)
    return Panel(f"{title}\n{_density(m)}", m, {1: ("scored", BLUE)}, **kw)


# --------------------------------------------------------------------------------------------
# One function per mechanism: the panels of its figure


def full_figure(n: int) -> Figure:
    fig = Figure("full", f"Full attention (n={n})")
    for causal in (False, True):
        layer = attention.build("full", HIDDEN, HEADS, causal=causal)
        fig.panels.append(_mask_panel(f"full, causal={causal}", layer.pattern(n)[0]))
    return fig


def _longformer_panel(
    title: str, layer: Any, n: int, is_global: Tensor | None, head: int = 0
) -> Panel:
    mask = layer.pattern(n, is_global)[head].numpy()
    cat = mask.astype(np.int64)
    if is_global is not None:
        g = is_global.numpy()
        cat[(g[:, None] | g[None, :]) & mask] = 2
    cats = {1: ("window", BLUE), 2: ("global token", RED)}
    return Panel(f"{title}\n{_density(cat)}", cat, cats)


def longformer_figure(n: int) -> Figure:
    w = max(2, (n // 8) // 2 * 2)
    fig = Figure(
        "longformer",
        f"Longformer (n={n}): sliding window w={w} (w/2 each side), dilation, global tokens",
    )
    plain = attention.build("longformer", HIDDEN, HEADS, window=w)
    fig.panels.append(_longformer_panel(f"window={w}, dilation=1", plain, n, None))
    dilated = attention.build("longformer", HIDDEN, HEADS, window=w, dilation=[1, 2])
    fig.panels.append(
        _longformer_panel(f"window={w}, dilation=[1, 2]: head 1 (d=2)", dilated, n, None, head=1)
    )
    glob = torch.zeros(n, dtype=torch.bool)
    glob[[0, n // 2]] = True
    fig.panels.append(
        _longformer_panel(f"window={w}, global tokens 0 and {n // 2}", plain, n, glob)
    )
    causal = attention.build("longformer", HIDDEN, HEADS, window=w, causal=True)
    fig.panels.append(_longformer_panel(f"window={w}, causal=True", causal, n, None))
    return fig


def _bigbird_panel(layer: Any, n: int, head: int = 0) -> Panel:
    """Token categories from the block layout: 1 sliding, 2 global, 3 random."""
    b = layer.block_size
    lay = layer.layout(-(-n // b))
    index, valid = lay.index[head], lay.valid[head]
    nb, k = index.shape
    r, g = layer.num_random_blocks, layer.num_global_blocks
    slot_cat = torch.tensor([1] * (k - g - r) + [2] * g + [3] * r)
    blocks = torch.zeros(nb, nb, dtype=torch.long)
    rows = torch.arange(nb)[:, None].expand(nb, k)
    blocks[rows[valid], index[valid]] = slot_cat.expand(nb, k)[valid]
    blocks[lay.global_blocks] = 2
    tokens = blocks.repeat_interleave(b, 0).repeat_interleave(b, 1)
    pattern = layer.pattern(n)[head]
    tokens = tokens[: pattern.shape[0], : pattern.shape[1]]
    if layer.causal:
        tokens = tokens.tril()
    if not torch.equal(tokens > 0, pattern):
        raise RuntimeError("bigbird layout parts do not add up to layer.pattern(n)")
    extra = f"; +{g * b} extra global tokens first" if layer.variant == "etc" else ""
    title = (
        f"variant={layer.variant}, causal={layer.causal}\nblock_size={b}, "
        f"sliding={layer.num_sliding_blocks}, global={g}, random={r}"
    )
    cats = {1: ("sliding", BLUE), 2: ("global", RED), 3: ("random", GREEN)}
    return Panel(f"{title}\n{_density(tokens.numpy())}{extra}", tokens.numpy(), cats, grid=b)


def bigbird_figure(n: int) -> Figure:
    b = max(1, n // 16)
    fig = Figure("bigbird", f"BigBird (n={n}): block-sparse, block_size={b}")
    opts = {
        "block_size": b,
        "num_random_blocks": 2,
        "num_global_blocks": 2,
        "num_sliding_blocks": 3,
        "seed": 0,
    }
    for extra in ({}, {"variant": "etc"}, {"causal": True}):
        layer = attention.build("bigbird", HIDDEN, HEADS, **opts, **extra)
        fig.panels.append(_bigbird_panel(layer, n))
    fig.note = (
        "head 0 shown; the random blocks differ per head and are fixed by (seed, "
        "layer_idx, number of blocks). Grid lines: blocks."
    )
    return fig


def linformer_figure(n: int) -> Figure:
    k = max(1, n // 4)
    layer = attention.build("linformer", HIDDEN, HEADS, k=k, max_seq_len=n, sharing="headwise")
    e, f = (m.detach().abs().numpy() for m in layer.projection.matrices(n))
    if e.ndim == 3:  # one matrix per head: show head 0
        e, f = e[0], f[0]
    fig = Figure(
        "linformer",
        f"Linformer (n={n}, k={k}, sharing=headwise): keys and values "
        "projected along the sequence to k rows",
    )
    fig.note = (
        "No token mask: projected key i = sum_j E[i, j] k_j mixes ALL n keys, and every "
        "query attends to all k projected keys (E, F shown at initialisation: "
        "uniform ±1/sqrt(k); training learns them)."
    )
    for name, m in (("E (keys)", e), ("F (values)", f)):
        fig.panels.append(
            Panel(
                f"|{name}|, k x n: which keys feed\neach projected row",
                m,
                cmap="viridis",
                colorbar="|weight|",
                xlabel="key position j",
                ylabel="projected row i (of k)",
            )
        )
    every = np.ones((n, k), dtype=np.int64)
    fig.panels.append(
        Panel(
            f"queries x projected keys, n x k\nall {n * k} pairs scored (vs {n * n} for full)",
            every,
            {1: ("scored", BLUE)},
            xlabel="projected key (of k)",
        )
    )
    return fig


def _clustered_input(n: int, clusters: int = 4, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Tokens drawn around a few centres in shuffled order: similar tokens share buckets."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, HIDDEN, generator=gen)
    label = torch.randint(clusters, (n,), generator=gen)
    x = centres[label] + 0.3 * torch.randn(n, HIDDEN, generator=gen)
    return x[None], label


def lsh_figure(n: int) -> Figure:
    c = max(2, n // 8)
    hashes = 2
    nbk = max(2, 2 ** ((2 * (n // c)).bit_length() - 1))
    layer = attention.build(
        "lsh", HIDDEN, HEADS, num_buckets=nbk, n_hashes=hashes, chunk_length=c, seed=0
    )
    x, _ = _clustered_input(n)
    counts = layer.scored_pairs(x)[0, 0].numpy()
    fig = Figure(
        "lsh",
        f"Reformer LSH (n={n}): chunk_length={c}, num_buckets={nbk}, "
        f"n_hashes={hashes}; input: 4 clusters of tokens, shuffled",
    )
    cats = {
        i: (f"scored in {i} round{'s' * (i > 1)}", col)
        for i, col in zip(range(1, hashes + 1), ("#9ecae1", "#08519c"), strict=False)
    }
    fig.panels.append(
        Panel(f"scored pairs, token order (head 0)\n{_density(counts)}", counts, cats)
    )
    if hasattr(layer, "buckets") and hasattr(layer, "sort_order"):
        buckets = layer.buckets(x)
        order = layer.sort_order(buckets)[0, 0, 0].numpy()
        fig.panels.append(
            Panel(
                "same pairs in round-1 sorted order\n(bucket, position); "
                "a chunk sees itself + the previous chunk",
                counts[np.ix_(order, order)],
                cats,
                grid=c,
                xlabel="key rank (sorted)",
                ylabel="query rank (sorted)",
            )
        )
        fig.panels.append(
            Panel(
                "bucket of each token per round",
                buckets[0, 0].numpy(),
                cmap="tab20",
                colorbar="bucket id",
                xlabel="token position",
                ylabel="hashing round",
                vmax=nbk,
                yticks=list(range(hashes)),
            )
        )
    fig.note = (
        "Head 0. Tokens are sorted by (bucket, position) in each round and cut into "
        "chunks; a pair is scored when the key is in the query's chunk or the previous "
        "one. Grid lines: chunks."
    )
    return fig


def mask_figure(name: str, n: int) -> Figure:
    """Any mechanism with a token mask (`layer.pattern`), bidirectional and causal, with the
    options it takes under a budget scaled to n (`compare_options`): the picture of a
    mechanism that has no figure of its own (local attention, a newly registered one)."""
    from types import SimpleNamespace

    cls = attention.get(name)
    budget = SimpleNamespace(
        window=max(2, n // 8),
        block_size=max(2, n // 16),
        random_blocks=2,
        linformer_k=max(1, n // 8),
        lsh_chunk=max(2, n // 8),
        lsh_hashes=2,
    )
    opts = cls.compare_options(budget, n)
    fig = Figure(name, f"{name} attention (n={n}; {_describe(opts)})")
    for causal in (False, True) if cls.supports_causal else (False,):
        layer = attention.build(name, HIDDEN, HEADS, causal=causal, **opts)
        fig.panels.append(_mask_panel(f"{name}, causal={causal}", layer.pattern(n).any(0)))
    return fig


def _describe(opts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in opts.items()) or "default options"


# Mechanisms with a figure of their own (their parts coloured); any other: `mask_figure`.
FIGURES: dict[str, Callable[[int], Figure]] = {
    "full": full_figure,
    "longformer": longformer_figure,
    "bigbird": bigbird_figure,
    "linformer": linformer_figure,
    "lsh": lsh_figure,
}


# --------------------------------------------------------------------------------------------
# Drawing


def _draw_panel(ax: Any, p: Panel) -> None:
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    square = p.image.shape[0] == p.image.shape[1]
    aspect = "equal" if square else "auto"
    if p.categories is not None:
        top = max(p.categories)
        colours = [WHITE] + [p.categories.get(i, ("", "#999999"))[1] for i in range(1, top + 1)]
        norm = BoundaryNorm(np.arange(-0.5, top + 1), len(colours))
        ax.imshow(
            p.image, cmap=ListedColormap(colours), norm=norm, interpolation="nearest", aspect=aspect
        )
        present = sorted(set(np.unique(p.image).tolist()) - {0})
        handles = [
            Patch(facecolor=p.categories[i][1], edgecolor="0.3", label=p.categories[i][0])
            for i in present
            if i in p.categories
        ]
        if handles:
            ax.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.12),
                ncol=len(handles),
                fontsize=7,
                frameon=False,
            )
    else:
        im = ax.imshow(
            p.image, cmap=p.cmap, interpolation="nearest", aspect=aspect, vmin=0, vmax=p.vmax
        )
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label(p.colorbar, fontsize=7)
        cb.ax.tick_params(labelsize=6)
    if p.grid:
        for t in np.arange(p.grid, p.image.shape[1], p.grid) - 0.5:
            ax.axvline(t, color="0.85", lw=0.4, zorder=0)
        for t in np.arange(p.grid, p.image.shape[0], p.grid) - 0.5:
            ax.axhline(t, color="0.85", lw=0.4, zorder=0)
    for spine in ax.spines.values():
        spine.set_color("0.5")
    ax.set_title(p.title, fontsize=8)
    ax.set_xlabel(p.xlabel, fontsize=7)
    ax.set_ylabel(p.ylabel, fontsize=7)
    ax.tick_params(labelsize=6)
    if p.yticks is not None:
        ax.set_yticks(p.yticks, [str(t + 1) for t in p.yticks])


def _render(rows: list[Figure], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(f.panels) for f in rows)
    size = 3.8
    fig = plt.figure(figsize=(size * cols, (size + 1.0) * len(rows) + 0.4), layout="constrained")
    subs = fig.subfigures(len(rows), 1, squeeze=False)[:, 0] if len(rows) > 1 else [fig]
    for sub, f in zip(subs, rows, strict=True):
        axes = sub.subplots(1, cols, squeeze=False)[0]
        for c, ax in enumerate(axes):
            if c < len(f.panels):
                _draw_panel(ax, f.panels[c])
            else:
                ax.axis("off")
        sub.suptitle(
            f.title,
            fontsize=11 if len(rows) == 1 else 12,
            weight="normal" if len(rows) == 1 else "bold",
        )
        if f.note and len(rows) == 1:
            sub.supxlabel(textwrap.fill(f.note, int(size * cols * 17)), fontsize=8, color="0.3")
    if len(rows) > 1 and title:
        fig.suptitle(title, fontsize=15)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_all(
    out: str | Path,
    n: int = 64,
    mechanisms: list[str] | None = None,
    warn: Callable[[str], None] = print,
) -> list[Path]:
    """One PNG per mechanism and `sheet.png` with all of them; returns the written paths.

    A mechanism that cannot be built (not implemented yet, failing) is skipped with a warning.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    figures: list[Figure] = []
    torch.manual_seed(0)
    for name in mechanisms or attention.mechanisms():
        try:
            fig = FIGURES[name](n) if name in FIGURES else mask_figure(name, n)
            path = out / f"{name}.png"
            _render([fig], path)
        except Exception as err:  # a mechanism still being written must not stop the rest
            warn(f"skipping {name} pattern: {type(err).__name__}: {err}")
            continue
        figures.append(fig)
        written.append(path)
    if figures:
        path = out / "sheet.png"
        _render(figures, path, f"Attention patterns, n={n} (rows: queries, columns: keys)")
        written.append(path)
    return written
