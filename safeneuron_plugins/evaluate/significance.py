"""Uncertainty of attack success rates: intervals and paired tests, computed with scipy.

- :func:`wilson`: the 95% Wilson score interval of one rate, ``scipy.stats.binomtest(k, n)
  .proportion_ci(method="wilson")`` (no continuity correction).
- :func:`paired_difference`: two success vectors over the *same* prompts (two conditions of one
  model, or two models). The difference of rates gets Newcombe's (1998) hybrid score interval for
  paired proportions (his method 10: the two Wilson intervals combined with the phi correlation of
  the pairs, phi continuity-corrected as in the paper). It is closed-form and deterministic (no
  resampling seed) and, unlike a paired bootstrap, does not collapse to a zero-width interval when no
  prompt changes outcome. The p-value is the exact McNemar test: a two-sided binomial test of the
  discordant pairs against 1/2 (``scipy.stats.binomtest``), 1.0 when there are none.

scipy is imported inside the functions, so importing this package never needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes out of ``n``; ``(0.0, 1.0)`` when ``n`` is 0."""
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 when both are 0)."""
    m = int(a_only) + int(b_only)
    if m == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(int(a_only), m, 0.5, alternative="two-sided").pvalue)


def newcombe_paired(both: int, a_only: int, b_only: int, neither: int,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's method 10 interval for rate(a) - rate(b) from the paired 2x2 counts."""
    e, f, g, h = int(both), int(a_only), int(b_only), int(neither)
    n = e + f + g + h
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (e + f) / n, (e + g) / n
    d = p1 - p2
    l1, u1 = wilson(e + f, n, confidence)
    l2, u2 = wilson(e + g, n, confidence)
    denom = (e + f) * (g + h) * (e + g) * (f + h)
    if denom == 0:
        phi = 0.0
    else:
        num = e * h - f * g
        if num > 0:  # Newcombe's continuity correction of the phi coefficient
            num = max(num - n / 2, 0.0)
        phi = num / math.sqrt(denom)
    lo = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    hi = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, lo), min(1.0, hi)


def paired_difference(a: Sequence[bool], b: Sequence[bool], confidence: float = 0.95) -> dict[str, Any]:
    """Rate of ``a`` minus rate of ``b`` on the same items (``a[i]`` and ``b[i]`` judge item i).

    Returns ``diff``, ``ci95`` (Newcombe's paired interval), ``p_value`` (exact McNemar), ``n``,
    the rates ``a`` and ``b`` and the 2x2 counts (``both``, ``a_only``, ``b_only``, ``neither``;
    the discordant ones are ``a_only`` and ``b_only``)."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: the two success lists must pair the same items, got lengths "
                         f"{len(a)} and {len(b)}")
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    both = sum(x and y for x, y in zip(a, b))
    a_only = sum(x and not y for x, y in zip(a, b))
    b_only = sum(y and not x for x, y in zip(a, b))
    n = len(a)
    neither = n - both - a_only - b_only
    lo, hi = newcombe_paired(both, a_only, b_only, neither, confidence)
    return {"diff": (a_only - b_only) / n if n else 0.0, "ci95": [lo, hi],
            "p_value": mcnemar_exact(a_only, b_only), "n": n,
            "a": sum(a) / n if n else 0.0, "b": sum(b) / n if n else 0.0,
            "discordant": {"a_only": a_only, "b_only": b_only}, "both": both, "neither": neither,
            "method": "Newcombe paired score interval; exact McNemar test"}


def paired_power(rate_b: float, ratio: float, n: int, rho: float = 0.5, *, alpha: float = 0.05,
                 draws: int = 2000, seed: int = 0) -> float:
    """Power of the exact McNemar test to find rate(a) < rate(b) when rate(a) = ``ratio`` x ``rate_b``, over
    ``n`` paired items, by simulation: each item's two outcomes are thresholded draws of a bivariate normal
    with correlation ``rho`` (the tetrachoric correlation of the pairs; 0 = independent arms). The share of
    ``draws`` whose test has p < ``alpha`` with a's rate the lower one."""
    import numpy as np
    from scipy.stats import norm

    if not (0 < rate_b < 1 and 0 < ratio * rate_b < 1):
        raise ValueError(f"paired_power: need 0 < rate_b < 1 and 0 < ratio x rate_b < 1, got {rate_b}, {ratio}")
    rng = np.random.default_rng(seed)
    za, zb = norm.ppf(ratio * rate_b), norm.ppf(rate_b)
    hits = 0
    for _ in range(draws):
        x = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
        a, b = x[:, 0] < za, x[:, 1] < zb
        a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
        hits += a_only < b_only and mcnemar_exact(a_only, b_only) < alpha
    return hits / draws


def format_interval(ci: Sequence[float], digits: int = 2) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


__all__ = ["wilson", "mcnemar_exact", "newcombe_paired", "paired_difference", "paired_power", "format_interval"]
