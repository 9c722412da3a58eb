"""What a mechanism's picture shows, as data: the panels `longseq patterns` draws.

Each mechanism class owns its picture: `SelfAttention.picture(n)` returns a `Picture`,
computed from the layer itself (its `pattern(n)`, its block layout, the pairs it scored), never
redrawn by hand. The default is the layer's token mask, bidirectional and causal; a mechanism
whose pattern has parts worth telling apart (Longformer's global tokens, BigBird's sliding /
global / random blocks) or that has no token mask (Linformer, LSH) overrides it in its own file.

Nothing here draws or chooses colours: `longseq.viz.patterns` renders a `Picture` with
matplotlib and gives category i the same colour in every picture (1 blue, 2 red, 3 green, ...;
a `shaded` panel's categories: shades of one colour, light to dark).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

# A picture needs the pattern, not capacity: small layers.
HIDDEN, HEADS = 64, 2


@dataclass
class Panel:
    """One image. With `categories`: an integer image, 0 = pair not scored, value i = the part
    labelled categories[i] (drawn with a legend). Without: a heat map from 0 to `vmax` with a
    colour bar labelled `colorbar`."""

    title: str
    image: np.ndarray | Tensor  # stored as np.ndarray
    categories: dict[int, str] | None = None
    shaded: bool = False  # categories are degrees of one thing (scored in 1, 2, ... rounds)
    colorbar: str = ""
    identifiers: bool = False  # heat map of ids (bucket ids), not magnitudes
    xlabel: str = "key position"
    ylabel: str = "query position"
    grid: int = 0  # lines every `grid` cells (blocks, chunks); 0: none
    vmax: float | None = None
    yticks: dict[int, str] | None = None  # row -> label

    def __post_init__(self) -> None:
        if isinstance(self.image, Tensor):
            self.image = self.image.detach().cpu().numpy()
        self.image = np.asarray(self.image)


@dataclass
class Picture:
    """A mechanism's figure: a row of panels under a title, with a note line below."""

    name: str  # the registered name: the PNG's name
    title: str
    panels: list[Panel] = field(default_factory=list)
    note: str = ""


def reach(n: int) -> int:
    """The reach (keys per query, see `SelfAttention.options_at`) of an n-token picture: n/8,
    small enough that a pattern's structure shows (a window of n/8, ...)."""
    return max(2, n // 8)


def describe(opts: dict[str, Any]) -> str:
    """Options as a title phrase ("window 8, dilation 2"), or "default options"."""
    return ", ".join(f"{k} {v}" for k, v in opts.items()) or "default options"


def density(image: np.ndarray | Tensor) -> str:
    """The share of pairs scored (nonzero), as a title line."""
    return f"{100 * float((np.asarray(image) > 0).mean()):.0f}% of pairs"


def category_panel(title: str, image: np.ndarray | Tensor, labels: list[str], **kw: Any) -> Panel:
    """An integer image with parts 1.. = `labels`, its density as the title's last line."""
    cat = np.asarray(image).astype(np.int64)
    return Panel(f"{title}\n{density(cat)}", cat, dict(enumerate(labels, 1)), **kw)


def mask_panel(title: str, mask: np.ndarray | Tensor, **kw: Any) -> Panel:
    """A bool (n, n) mask: one part, "scored"."""
    return category_panel(title, mask, ["scored"], **kw)


def clustered_input(n: int, clusters: int = 4, seed: int = 0) -> Tensor:
    """(1, n, HIDDEN) tokens drawn around a few centres in shuffled order: an input with
    structure, for a mechanism whose pattern depends on the data (similar tokens group)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, HIDDEN, generator=gen)
    label = torch.randint(clusters, (n,), generator=gen)
    return (centres[label] + 0.3 * torch.randn(n, HIDDEN, generator=gen))[None]


__all__ = [
    "HEADS",
    "HIDDEN",
    "Panel",
    "Picture",
    "category_panel",
    "clustered_input",
    "density",
    "describe",
    "mask_panel",
    "reach",
]
