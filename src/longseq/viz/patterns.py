"""Drawing the attention-pattern pictures: which (query, key) pairs each mechanism scores.

    longseq patterns --out DIR [--n 64]

One PNG per mechanism and a combined sheet, in the style of the Longformer and BigBird papers'
figures. What each picture shows comes from the mechanism's class, `cls.picture(n)` (see
`longseq.attention.pictures`), computed from the layer itself; this module only draws it:
colours, legends, colour bars, grid lines and layout. It never names a mechanism.

Colours: category i of a panel has the same colour in every picture (1 blue, 2 red, 3 green,
4 orange, ...), so "scored", a window and BigBird's sliding blocks are blue, global tokens red,
random blocks green; a `shaded` panel's categories (LSH's pairs scored in 1, 2 rounds) are
shades of blue, light to dark. Heat maps: viridis for magnitudes, tab20 for identifiers.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from longseq import attention
from longseq.attention.pictures import Panel, Picture

WHITE = "#ffffff"
# category i -> PALETTE[i - 1] (matplotlib's tab10 order: blue, red, green, orange, ...)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
SHADES = ("#9ecae1", "#08519c")  # a shaded panel's categories span these, light to dark


def _colours(p: Panel) -> list[str]:
    """The colour of each value 0 .. max category of a panel with categories (0: white)."""
    # matplotlib here, not at the top: over a second to import, and only drawing needs it
    from matplotlib.colors import to_hex, to_rgb

    cats = sorted(p.categories or {})
    if p.shaded:
        light, dark = (np.array(to_rgb(c)) for c in SHADES)
        steps = np.linspace(0, 1, len(cats)) if len(cats) > 1 else [1.0]
        by_value = {v: to_hex(light + t * (dark - light)) for v, t in zip(cats, steps, strict=True)}
    else:
        by_value = {v: PALETTE[(v - 1) % len(PALETTE)] for v in cats}
    return [WHITE] + [by_value.get(v, "#999999") for v in range(1, max(cats, default=0) + 1)]


def _draw_categories(ax: Any, p: Panel, aspect: str) -> None:
    # matplotlib here, not at the top: over a second to import, and only drawing needs it
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    assert p.categories is not None
    colours = _colours(p)
    norm = BoundaryNorm(np.arange(-0.5, len(colours)), len(colours))
    cmap = ListedColormap(colours)
    ax.imshow(p.image, cmap=cmap, norm=norm, interpolation="nearest", aspect=aspect)
    present = sorted(set(np.unique(p.image).tolist()) & set(p.categories))
    handles = [Patch(facecolor=colours[i], edgecolor="0.3", label=p.categories[i]) for i in present]
    if handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12),
            ncol=len(handles),
            fontsize=7,
            frameon=False,
        )


def _draw_heat(ax: Any, p: Panel, aspect: str) -> None:
    cmap = "tab20" if p.identifiers else "viridis"
    im = ax.imshow(p.image, cmap=cmap, interpolation="nearest", aspect=aspect, vmin=0, vmax=p.vmax)
    cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(p.colorbar, fontsize=7)
    cb.ax.tick_params(labelsize=6)


def _draw_panel(ax: Any, p: Panel) -> None:
    aspect = "equal" if p.image.shape[0] == p.image.shape[1] else "auto"
    if p.categories is not None:
        _draw_categories(ax, p, aspect)
    else:
        _draw_heat(ax, p, aspect)
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
        ax.set_yticks(list(p.yticks), list(p.yticks.values()))


def _heading(pic: Picture) -> str:
    """The title, led by the registered name where the title does not say it (a subclass
    registered under a new name draws its parent's picture)."""
    return pic.title if pic.name.lower() in pic.title.lower() else f"{pic.name}: {pic.title}"


def _render(rows: list[Picture], path: Path, title: str | None = None) -> None:
    # matplotlib here, not at the top: over a second to import, and only drawing needs it
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
            _heading(f),
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

    Each picture is `attention.get(name).picture(n)`, made under seed 0 (a picture is the same
    whichever others are drawn; the caller's random state is left as it was). A mechanism
    that cannot be built (not implemented yet, failing) is skipped with a warning.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    drawn: list[Picture] = []
    for name in mechanisms or attention.mechanisms():
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                pic = attention.get(name).picture(n)
            path = out / f"{name}.png"
            _render([pic], path)
        except Exception as err:  # a mechanism still being written must not stop the rest
            warn(f"skipping {name} pattern: {type(err).__name__}: {err}")
            continue
        drawn.append(pic)
        written.append(path)
    if drawn:
        path = out / "sheet.png"
        _render(drawn, path, f"Attention patterns, n={n} (rows: queries, columns: keys)")
        written.append(path)
    return written
