"""Intervals and paired tests against hand-computable cases and published values."""

import math

import pytest

from safeneuron_plugins.evaluate.significance import mcnemar_exact, newcombe_paired, paired_difference, wilson

Z = 1.959963984540054  # the 97.5% normal quantile


def _wilson_closed_form(k, n):
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_matches_the_closed_form():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(Z * Z / (10 + Z * Z), rel=1e-12)
    for k, n in ((3, 10), (7, 24), (24, 24), (1, 1)):
        assert wilson(k, n) == pytest.approx(_wilson_closed_form(k, n), rel=1e-9, abs=1e-12)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(5, 3)


def test_mcnemar_exact():
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5 ** 10)         # all discordant pairs one way
    assert mcnemar_exact(1, 3) == pytest.approx(2 * (1 + 4) / 16)        # 2 * P(X <= 1), X ~ Bin(4, 1/2)


def test_newcombe_paired_matches_the_published_examples():
    # Newcombe (1998), Statistics in Medicine 17:2635, method 10, counts (both, a only, b only, neither)
    for counts, expected in (((36, 12, 2, 0), (0.0569, 0.3404)), ((18, 12, 2, 18), (0.0562, 0.3290)),
                             ((53, 0, 0, 1), (-0.0729, 0.0729)), ((0, 30, 0, 0), (0.8395, 1.0))):
        assert newcombe_paired(*counts) == pytest.approx(expected, abs=1e-4)


def test_paired_difference():
    same = [True, False, True, True, False, False] * 4
    r = paired_difference(same, list(same))
    assert r["diff"] == 0 and r["p_value"] == 1.0 and r["n"] == 24
    assert r["discordant"] == {"a_only": 0, "b_only": 0}
    assert r["ci95"][0] < 0 < r["ci95"][1], "no discordant pair is not certainty of no difference"
    balanced = paired_difference([True, False] * 5, [False, True] * 5)  # b = c = 5
    assert balanced["p_value"] == 1.0 and balanced["diff"] == 0
    a = [True] * 20 + [False] * 4
    b = [False] * 18 + [True] * 2 + [False] * 4
    clear = paired_difference(a, b)
    assert clear["diff"] == pytest.approx(18 / 24) and clear["discordant"] == {"a_only": 18, "b_only": 0}
    assert clear["p_value"] < 0.05 and clear["ci95"][0] > 0
    assert paired_difference(b, a)["ci95"] == pytest.approx([-clear["ci95"][1], -clear["ci95"][0]])
    with pytest.raises(ValueError, match="same items"):
        paired_difference([True], [True, False])
