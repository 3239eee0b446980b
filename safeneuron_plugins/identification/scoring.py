"""Scores and selection of safety neurons (SafeNeuron, arXiv 2602.12158; docs/identify.md).

Activation Effect Size: Cohen's d with pooled SD, one-sided (more active on harmful input).
Safety Activation Shift: z-score of mean_harmful - mean_harmless within each layer, positive only.
NeuroStrike's scorer: a logistic-regression probe per layer, z-score of its weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .stats import RunningStats


def effect_size(harmful: RunningStats, harmless: RunningStats) -> torch.Tensor:
    """Cohen's d = (mean_u - mean_s) / pooled SD, per neuron; 0 where both are constant and equal."""
    n_u, n_s = harmful.count, harmless.count
    if n_u + n_s <= 2:
        raise ValueError("effect size needs at least 3 prompts in total")
    pooled = ((n_u - 1) * harmful.var + (n_s - 1) * harmless.var) / (n_u + n_s - 2)
    delta = harmful.mean - harmless.mean
    d = delta / pooled.sqrt()
    # zero variance: a constant shift is infinitely separated, no shift is no effect
    return torch.where(pooled > 0, d, torch.sign(delta) * math.inf).nan_to_num(nan=0.0, posinf=math.inf, neginf=-math.inf)


def activation_shift(harmful: RunningStats, harmless: RunningStats) -> torch.Tensor:
    return harmful.mean - harmless.mean


def zscore(values: torch.Tensor) -> torch.Tensor:
    """z-score within one layer (population SD); all-equal values give 0."""
    std = values.std(unbiased=False)
    if std == 0 or not torch.isfinite(std):
        return torch.zeros_like(values)
    return (values - values.mean()) / std


@dataclass
class Selection:
    """Selected neurons per layer plus which criterion picked each (sorted index lists)."""

    neurons: dict[int, list[int]]
    es: dict[int, list[int]]
    sas: dict[int, list[int]]


def _indices(flags: torch.Tensor) -> list[int]:
    return flags.nonzero().flatten().tolist()


def _top_k_flags(scores: dict[int, torch.Tensor], k_of: dict[int, int] | int,
                 among: dict[int, torch.Tensor] | None = None) -> dict[int, torch.Tensor]:
    """Flags of the highest-scoring neurons: per layer (dict k) or across layers (int k).

    ``among`` restricts the candidates. Ties are broken by (layer, index), deterministically."""
    flags = {l: torch.zeros_like(s, dtype=torch.bool) for l, s in scores.items()}
    if isinstance(k_of, dict):
        for l, s in scores.items():
            cand = s.clone() if among is None else torch.where(among[l], s, -math.inf)
            k = min(k_of[l], int((cand > -math.inf).sum()))
            if k > 0:
                flags[l][torch.sort(cand, descending=True, stable=True).indices[:k]] = True
        return flags
    layers = sorted(scores)
    cat = torch.cat([scores[l] if among is None else torch.where(among[l], scores[l], -math.inf)
                     for l in layers])
    k = min(k_of, int((cat > -math.inf).sum()))
    chosen = torch.sort(cat, descending=True, stable=True).indices[:k]
    flat = torch.zeros_like(cat, dtype=torch.bool)
    flat[chosen] = True
    start = 0
    for l in layers:
        n = scores[l].numel()
        flags[l] = flat[start:start + n]
        start += n
    return flags


def _ratio_counts(scores: dict[int, torch.Tensor], ratio: float, scope: str) -> dict[int, int] | int:
    """How many neurons a ``ratio`` keeps: per layer (``scope="layer"``) or over the whole model."""
    if scope == "layer":
        return {l: math.ceil(ratio * v.numel()) for l, v in scores.items()}
    return math.ceil(ratio * sum(v.numel() for v in scores.values()))


def top_fraction(scores: dict[int, torch.Tensor], ratio: float, scope: str = "global",
                 among: dict[int, torch.Tensor] | None = None) -> dict[int, list[int]]:
    """The highest-scoring ``ratio`` of neurons, over the whole model or per layer (sorted indices)."""
    k_of = _ratio_counts(scores, ratio, scope)
    flags = _top_k_flags({l: v.double().nan_to_num(nan=-math.inf) for l, v in scores.items()}, k_of, among=among)
    return {l: _indices(flags[l]) for l in sorted(scores)}


def select(d: dict[int, torch.Tensor], delta: dict[int, torch.Tensor], *, tau_es: float = 3.0,
           tau_sas: float = 2.0, selection: str = "union", neuron_ratio: float | None = None,
           ratio_scope: str = "global", ratio_mode: str = "instead") -> Selection:
    """Select safety neurons from effect sizes ``d`` and mean shifts ``delta`` (per layer).

    With ``neuron_ratio`` and ``ratio_mode="instead"`` the top fraction is ranked by the criterion
    ``selection`` names: ``es`` by effect size d, ``sas`` by the layer z-score of delta (neurons with
    a positive shift only, so fewer than k when fewer shift up), ``union`` by effect size (the two
    scores are on different scales; effect size is the paper's ranking). ``ratio_mode="cap"`` keeps
    the threshold selection and at most k of it, highest effect size first. Every way the recorded
    ES and SAS sets are subsets of the selected neurons: with a ratio the ranking criterion's set is the
    whole selection, and otherwise each is its threshold set within the selection."""
    z = {l: zscore(delta[l]) for l in d}
    es_flags = {l: d[l] > tau_es for l in d}
    sas_flags = {l: (z[l] > tau_sas) & (delta[l] > 0) for l in d}
    chosen = {l: {"union": es_flags[l] | sas_flags[l], "es": es_flags[l],
                  "sas": sas_flags[l]}[selection] for l in d}
    if neuron_ratio is not None:
        k_of = _ratio_counts(d, neuron_ratio, ratio_scope)
        # NaN-free scores: NaN ranks last (as -inf)
        by_es = {l: d[l].nan_to_num(nan=-math.inf) for l in d}
        if ratio_mode == "instead":
            if selection == "sas":
                by_sas = {l: torch.where(delta[l] > 0, z[l].nan_to_num(nan=-math.inf), -math.inf) for l in d}
                chosen = _top_k_flags(by_sas, k_of)
                sas_flags = chosen
            else:
                chosen = _top_k_flags(by_es, k_of)
                es_flags = chosen
        else:  # cap: threshold selection, then at most k by effect size
            chosen = _top_k_flags(by_es, k_of, among=chosen)
    es_flags = {l: es_flags[l] & chosen[l] for l in d}  # recorded within the selection, whatever selects
    sas_flags = {l: sas_flags[l] & chosen[l] for l in d}
    return Selection({l: _indices(chosen[l]) for l in sorted(d)},
                     {l: _indices(es_flags[l]) for l in sorted(d)},
                     {l: _indices(sas_flags[l]) for l in sorted(d)})


def neurostrike_probe(features: dict[int, torch.Tensor], labels: torch.Tensor, *, epochs: int = 5000,
                      lr: float = 1e-3, weight_decay: float = 1e-3, z: float = 3.0,
                      progress=None) -> dict[int, list[int]]:
    """NeuroStrike's scorer: per layer, a logistic-regression probe on pooled activations
    (full-batch Adam, ``epochs`` steps); keep neurons with probe-weight z-score > ``z`` and weight > 0.

    The per-layer probes are independent; they are trained side by side as one batched problem,
    which gives the same updates as training them one after another."""
    layers = sorted(features)
    sizes = {features[l].shape[1] for l in layers}
    y = labels.float()
    if len(sizes) == 1:
        groups = [layers]
    else:
        groups = [[l] for l in layers]
    out: dict[int, list[int]] = {}
    for group in groups:
        x = torch.stack([features[l].float() for l in group])             # [L, n, I]
        w = torch.zeros(x.shape[0], x.shape[2], requires_grad=True)      # [L, I]
        b = torch.zeros(x.shape[0], 1, requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(epochs):
                opt.zero_grad()
                logits = torch.einsum("lni,li->ln", x, w) + b
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y.expand_as(logits), reduction="none").mean(1).sum()
                loss.backward()
                opt.step()
                if progress is not None:
                    progress.update(len(group))
        weights = w.detach()
        for row, l in enumerate(group):
            zw = zscore(weights[row])
            out[l] = _indices((zw > z) & (weights[row] > 0))
    return out
