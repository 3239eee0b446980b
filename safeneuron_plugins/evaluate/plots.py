"""Matplotlib without a display, and one way to write a figure."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (works on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, flag: str = "plot") -> Path:
    """Write ``fig`` in the format of ``path``'s suffix (PNG, PDF, SVG, JPG; creating the folder) through the
    one writer (:func:`~safeneuron_plugins.files.write_file`: atomic, never over a file of another kind; errors
    name ``flag``), and release it."""
    from ..files import IMAGE, figure_bytes, write_file

    try:
        data = figure_bytes(fig, path)
    finally:
        pyplot().close(fig)
    return write_file(path, data, flag, IMAGE)


def rate_bars(ax, groups: list[str], series: dict[str, list[tuple[float, list[float]] | None]]) -> None:
    """Grouped bars of rates with their 95% intervals: one group per entry of ``groups`` on the x axis, one
    bar per series in each group; ``series[name][i]`` is ``(rate, [low, high])`` for group ``i``, or None
    where that series has no value there (no bar)."""
    width = 0.8 / max(len(series), 1)
    for j, (name, values) in enumerate(series.items()):
        shown = [(i, v) for i, v in enumerate(values) if v is not None]
        xs = [i + (j - (len(series) - 1) / 2) * width for i, _ in shown]
        rates = [rate for _, (rate, _) in shown]
        errs = [[max(rate - ci[0], 0) for _, (rate, ci) in shown], [max(ci[1] - rate, 0) for _, (rate, ci) in shown]]
        ax.bar(xs, rates, width, yerr=errs, capsize=2, error_kw={"elinewidth": 0.8}, label=name)
    ax.set_xticks(range(len(groups)), groups)


def finish_rate_figure(fig, ax, title: str, path: str | Path, *, ylabel: str = "attack success rate (95% CI)",
                       legend: dict | None = None) -> Path:
    """The axis labels, 0-1 range, title and legend every rate figure shares; writes it to ``path``."""
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(**(legend or {"fontsize": 8}))
    fig.tight_layout()
    return save_figure(fig, path)
