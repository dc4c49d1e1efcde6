"""The charts training and evaluation write: a line chart (loss curves) and grouped bars
(accuracy and judge scores), with matplotlib's file backend. Without matplotlib they are
skipped; the numbers are always written beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def line(
    path: Path, series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str
) -> None:
    plt = _pyplot()
    if plt is None or not any(len(xs) for xs, _ in series.values()):
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bars(
    path: Path,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    title: str,
    ylim: tuple[float, float],
    marks: dict[str, Sequence[float]] | None = None,
) -> None:
    """Grouped bars; a None value (not measured) leaves a gap, never a zero bar."""
    plt = _pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(max(6.5, 1.3 * len(groups) * max(1, len(series)) / 2), 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values) if v is not None]
        bar = ax.bar([x for x, _ in shown], [v for _, v in shown], width, label=name)
        ax.bar_label(bar, fmt="%.2f", fontsize=7)
    for name, values in (marks or {}).items():
        ax.scatter(range(len(groups)), values, marker="_", s=600, color="black", label=name, zorder=3)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
