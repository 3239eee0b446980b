"""Human-readable summaries of a mask: the per-layer table and a PNG of safety neurons per layer."""

from __future__ import annotations

from pathlib import Path

from .mask import NeuronMask
from .plots import pyplot, save_figure


def layer_table(mask: NeuronMask) -> str:
    """Per layer: selected neurons, ES-only, SAS-only, both; then the totals."""
    rows = mask.per_layer_breakdown()
    head = f"{'layer':>5} {'selected':>8} {'ES-only':>8} {'SAS-only':>8} {'both':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:>5} {r['selected']:>8} {r['es_only']:>8} {r['sas_only']:>8} {r['both']:>6}")
    tot = {k: sum(r[k] for r in rows) for k in ("selected", "es_only", "sas_only", "both")}
    lines.append("-" * len(head))
    lines.append(f"{'total':>5} {tot['selected']:>8} {tot['es_only']:>8} {tot['sas_only']:>8} {tot['both']:>6}")
    of = mask.total_neurons_in_model()
    if of:
        lines.append(f"{mask.num_neurons} safety neurons of {of} MLP neurons ({100 * mask.num_neurons / of:.2f}%)")
    return "\n".join(lines)


def plot_layers(mask: NeuronMask, path: str | Path, title: str | None = None) -> Path:
    """Bar chart of safety neurons per layer, split into ES-only / SAS-only / both."""
    plt = pyplot()

    rows = mask.per_layer_breakdown()
    x = [r["layer"] for r in rows]
    both = [r["both"] for r in rows]
    es = [r["es_only"] for r in rows]
    sas = [r["sas_only"] for r in rows]
    other = [r["selected"] - r["both"] - r["es_only"] - r["sas_only"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(x) * 0.3), 3.5))
    bottom = [0] * len(x)
    for values, label in ((both, "ES and SAS"), (es, "ES only"), (sas, "SAS only"), (other, "probe")):
        if any(values):
            ax.bar(x, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("safety neurons")
    ax.set_title(title or f"{mask.num_neurons} safety neurons ({mask.metadata.get('method', '')})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
