"""The report's figures: matplotlib (imported where drawn), files only, one function per kind of plot.

Each returns False when there is nothing to draw, so a section can leave its image out.
"""

from __future__ import annotations

from pathlib import Path


def use_file_backend() -> None:
    """matplotlib without a display (PNG files only); call once before drawing."""
    import matplotlib

    matplotlib.use("Agg")


def line_plot(path: Path, panels: list[tuple[str, list[tuple[str, list, list]]]], xlabel: str = "step") -> bool:
    """One row of panels; each panel (title, [(label, xs, ys), ...]). False when there is nothing to draw."""
    import matplotlib.pyplot as plt

    panels = [(title, [c for c in curves if c[1]]) for title, curves in panels]
    panels = [p for p in panels if p[1]]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), squeeze=False)
    for ax, (title, curves) in zip(axes[0], panels, strict=True):
        for label, xs, ys in curves:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def histogram(path: Path, values: list[float], title: str, xlabel: str) -> bool:
    import matplotlib.pyplot as plt

    if not values:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist(values, bins=min(40, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def scatter_plot(path: Path, points: list[tuple[str, float, float]], xlabel: str, ylabel: str) -> bool:
    import matplotlib.pyplot as plt

    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, x, y in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
