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


def frontier_plot(path: Path, curve: list[tuple[int, float, float, float | None, float | None]],
                  points: list[tuple[str, float | None, float | None, float | None, float | None]],
                  xlabel: str, ylabel: str, curve_label: str) -> bool:
    """The KL-win-rate frontier: the best-of-n curve `curve` = [(n, kl, win, low, high), ...] with its
    interval band and n labels, and each policy of `points` = [(label, kl, win, low, high), ...] as a
    point with its interval bar. Points without a KL or a win rate are left out; None bounds draw
    no band or bar. False when there is nothing to draw."""
    import matplotlib.pyplot as plt

    points = [p for p in points if p[1] is not None and p[2] is not None]
    if not curve and not points:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        kls, wins = [c[1] for c in curve], [c[2] for c in curve]
        ax.plot(kls, wins, marker="o", markersize=4, color="tab:grey", label=curve_label)
        if all(c[3] is not None and c[4] is not None for c in curve):
            ax.fill_between(kls, [c[3] for c in curve], [c[4] for c in curve], color="tab:grey", alpha=0.2)
        for n, kl, win, _, _ in curve:
            ax.annotate(f"n={n}", (kl, win), textcoords="offset points", xytext=(0, -12), fontsize=7,
                        ha="center", color="dimgrey")
    for i, (label, kl, win, low, high) in enumerate(points):
        yerr = [[win - low], [high - win]] if low is not None and high is not None else None
        ax.errorbar([kl], [win], yerr=yerr, fmt="o", capsize=3, color=f"C{i}", label=label)
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
