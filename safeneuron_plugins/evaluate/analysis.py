"""Describing masks: the per-layer table and plot of one mask, safety-neuron fraction over normalised
depth, and cross-category overlap."""

from __future__ import annotations

import itertools
from pathlib import Path

from ..mask import NeuronMask
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


def plot_layers(mask: NeuronMask, path: str | Path, title: str | None = None, flag: str = "plot") -> Path:
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
    return save_figure(fig, path, flag)


def layer_fractions(mask: NeuronMask) -> list[float]:
    """Fraction of each layer's MLP neurons that are safety neurons."""
    size = mask.fingerprint.get("intermediate_size")
    out = []
    for layer in sorted(mask.neurons):
        width = size[layer] if isinstance(size, list) else size
        out.append(len(mask.neurons[layer]) / width if width else 0.0)
    return out


def depth_profile(mask: NeuronMask, bins: int = 20) -> list[float]:
    """Layer fractions resampled to ``bins`` bins of normalised depth (0 = first layer, 1 = last)."""
    fr = layer_fractions(mask)
    n = len(fr)
    return [sum(fr[l] for l in range(n) if min(int(l * bins / n), bins - 1) == b) /
            max(1, sum(1 for l in range(n) if min(int(l * bins / n), bins - 1) == b)) for b in range(bins)]


def plot_depth_heatmap(masks: dict[str, NeuronMask], path: str | Path, bins: int = 20, flag: str = "plot") -> Path:
    """Heatmap: one row per model, columns over normalised depth, colour = safety-neuron fraction."""
    plt = pyplot()

    names = list(masks)
    grid = [[100 * v for v in depth_profile(masks[n], bins)] for n in names]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.6))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", extent=(0, 1, len(names), 0))
    ax.set_yticks([i + 0.5 for i in range(len(names))], names)
    ax.set_xlabel("normalised depth (first layer 0, last layer 1)")
    fig.colorbar(im, ax=ax, label="% of layer's MLP neurons")
    ax.set_title("Safety neurons per layer")
    fig.tight_layout()
    return save_figure(fig, path, flag)


def _flat(mask: NeuronMask) -> set[tuple[int, int]]:
    return {(l, j) for l, idx in mask.neurons.items() for j in idx}


def category_overlap(masks: dict[str, NeuronMask]) -> dict:
    """Core (in every category), shared (in more than one), task-specific (in exactly one) neurons,
    and the overlap ratio |intersection| / |union| averaged over all C(n, K) subsets, K = 2..n."""
    sets = {c: _flat(m) for c, m in masks.items()}
    names = sorted(sets)
    every = set().union(*sets.values()) if sets else set()
    membership = {n: sum(n in s for s in sets.values()) for n in every}
    core = {n for n, k in membership.items() if k == len(sets)}
    shared = {n for n, k in membership.items() if 1 < k < len(sets)}
    specific = {n for n, k in membership.items() if k == 1}
    ratios = {}
    for k in range(2, len(names) + 1):
        values = []
        for combo in itertools.combinations(names, k):
            union = set().union(*(sets[c] for c in combo))
            inter = set.intersection(*(sets[c] for c in combo))
            values.append(len(inter) / len(union) if union else 0.0)
        ratios[k] = sum(values) / len(values)
    return {"categories": {c: len(s) for c, s in sets.items()}, "core": len(core), "shared": len(shared),
            "task_specific": len(specific), "total": len(every), "overlap_ratio_by_k": ratios}


def plot_overlap(result: dict, path: str | Path, flag: str = "plot") -> Path:
    plt = pyplot()

    ks = sorted(result["overlap_ratio_by_k"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(ks, [result["overlap_ratio_by_k"][k] for k in ks], marker="o")
    a.set_xlabel("K categories")
    a.set_ylabel("mean |∩| / |∪|")
    a.set_title("Cross-category overlap")
    b.bar(["core", "shared", "specific"], [result["core"], result["shared"], result["task_specific"]])
    b.set_title("Safety neurons by how many categories use them")
    fig.tight_layout()
    return save_figure(fig, path, flag)
