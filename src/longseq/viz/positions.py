"""The chart of a causal LM's loss against position (`longseq evaluate` on a causal LM, the
long-context compare task): one line per model or mechanism, the trained context marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_loss_by_position(
    curves: dict[str, list[dict[str, Any]]],
    path: str | Path,
    *,
    trained: int | None = None,
    title: str = "",
    marks: dict[str, int] | None = None,
) -> None:
    """curves: label -> bucket rows ({start, end, loss}, `PositionSums.buckets`), each drawn
    at its bucket's middle; `trained`: a dashed line at the trained context; `marks`: more
    dotted vertical lines (label -> position)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for label, rows in curves.items():
        if rows:
            x = [(r["start"] + r["end"]) / 2 for r in rows]
            ax.plot(x, [r["loss"] for r in rows], marker="o", markersize=3, label=label)
    if trained is not None:
        ax.axvline(trained, color="black", linestyle="--", linewidth=1)
        ax.annotate(
            f" trained context ({trained:,})",
            (trained, 1.0),
            xycoords=("data", "axes fraction"),
            va="top",
            fontsize=8,
        )
    for label, x in (marks or {}).items():
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f" {label}", (x, 0.02), xycoords=("data", "axes fraction"), fontsize=8)
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["plot_loss_by_position"]
