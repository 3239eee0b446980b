"""Scoring maths against a plain reference computation on random data."""

import math

import numpy as np
import pytest
import torch

from safeneuron_plugins.identification.scoring import activation_shift, effect_size, select, zscore
from safeneuron_plugins.identification.stats import RunningStats


def _reference(u: np.ndarray, s: np.ndarray):
    n_u, n_s = len(u), len(s)
    pooled = ((n_u - 1) * u.var(0, ddof=1) + (n_s - 1) * s.var(0, ddof=1)) / (n_u + n_s - 2)
    delta = u.mean(0) - s.mean(0)
    d = delta / np.sqrt(pooled)
    z = (delta - delta.mean()) / delta.std()
    return d, delta, z


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    layers = {}
    for layer in range(3):
        u = rng.normal(0, 1, (50, 200))
        s = rng.normal(0, 1, (40, 200))
        u[:, :10] += rng.uniform(1, 5, 10)  # some neurons fire more on harmful input
        layers[layer] = (u, s)
    return layers


def test_effect_size_shift_and_zscore_match_reference(data):
    for u, s in data.values():
        su, ss = RunningStats.of(torch.tensor(u)), RunningStats.of(torch.tensor(s))
        d_ref, delta_ref, z_ref = _reference(u, s)
        np.testing.assert_allclose(effect_size(su, ss).numpy(), d_ref, rtol=1e-10)
        np.testing.assert_allclose(activation_shift(su, ss).numpy(), delta_ref, rtol=1e-10)
        np.testing.assert_allclose(zscore(activation_shift(su, ss)).numpy(), z_ref, rtol=1e-9)


def test_union_selection_matches_reference(data):
    d, delta, ref = {}, {}, {}
    for layer, (u, s) in data.items():
        su, ss = RunningStats.of(torch.tensor(u)), RunningStats.of(torch.tensor(s))
        d[layer], delta[layer] = effect_size(su, ss), activation_shift(su, ss)
        d_ref, delta_ref, z_ref = _reference(u, s)
        es = set(np.flatnonzero(d_ref > 1.5))
        sas = set(np.flatnonzero((z_ref > 2.0) & (delta_ref > 0)))
        ref[layer] = (es, sas)
    sel = select(d, delta, tau_es=1.5, tau_sas=2.0)
    for layer, (es, sas) in ref.items():
        assert sel.neurons[layer] == sorted(es | sas)
        assert sel.es[layer] == sorted(es) and sel.sas[layer] == sorted(sas)
        assert sel.neurons[layer], "the planted neurons must be found"
    only_es = select(d, delta, tau_es=1.5, tau_sas=2.0, selection="es")
    only_sas = select(d, delta, tau_es=1.5, tau_sas=2.0, selection="sas")
    for layer, (es, sas) in ref.items():
        assert only_es.neurons[layer] == sorted(es)
        assert only_sas.neurons[layer] == sorted(sas)


def test_one_sided_negative_effects_never_selected():
    u = torch.zeros(20, 4)
    s = torch.zeros(20, 4)
    s[:, 0] = 5.0 + torch.randn(20) * 0.1  # more active on harmless input
    su, ss = RunningStats.of(u + torch.randn(20, 4) * 0.1), RunningStats.of(s + torch.randn(20, 4) * 0.1)
    sel = select({0: effect_size(su, ss)}, {0: activation_shift(su, ss)}, tau_es=0.0, tau_sas=0.0)
    assert 0 not in sel.neurons[0]


def test_ratio_selection_global_layer_and_cap(data):
    d, delta = {}, {}
    for layer, (u, s) in data.items():
        su, ss = RunningStats.of(torch.tensor(u)), RunningStats.of(torch.tensor(s))
        d[layer], delta[layer] = effect_size(su, ss), activation_shift(su, ss)
    flat = np.concatenate([d[l].numpy() for l in sorted(d)])
    k = math.ceil(0.05 * flat.size)
    top = set(np.argsort(-flat, kind="stable")[:k])
    sel = select(d, delta, neuron_ratio=0.05, ratio_scope="global")
    got = {l * 200 + i for l, idx in sel.neurons.items() for i in idx}
    assert got == top

    per_layer = select(d, delta, neuron_ratio=0.05, ratio_scope="layer")
    for layer in d:
        k_l = math.ceil(0.05 * 200)
        assert per_layer.neurons[layer] == sorted(np.argsort(-d[layer].numpy(), kind="stable")[:k_l].tolist())

    thr = select(d, delta, tau_es=0.0, tau_sas=0.0)
    capped = select(d, delta, tau_es=0.0, tau_sas=0.0, neuron_ratio=0.01, ratio_mode="cap")
    n_cap = sum(len(v) for v in capped.neurons.values())
    assert n_cap == min(math.ceil(0.01 * 600), sum(len(v) for v in thr.neurons.values()))
    for layer in d:
        assert set(capped.neurons[layer]) <= set(thr.neurons[layer])
    # a cap larger than the threshold set changes nothing
    loose = select(d, delta, tau_es=3.0, tau_sas=2.0, neuron_ratio=1.0, ratio_mode="cap")
    assert loose.neurons == select(d, delta, tau_es=3.0, tau_sas=2.0).neurons


def test_streaming_merge_equals_one_shot():
    torch.manual_seed(0)
    x = torch.randn(1000, 64, dtype=torch.float64) * 3 + 7
    one = RunningStats.of(x)
    streamed = RunningStats.empty(64)
    for chunk in torch.split(x, 37):
        streamed.update(chunk)
    a, b = RunningStats.of(x[:300]), RunningStats.of(x[300:])
    merged = RunningStats.empty(64).merge_(a).merge_(b)
    for s in (streamed, merged):
        assert s.count == one.count
        torch.testing.assert_close(s.mean, one.mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.var, x.var(0), rtol=1e-10, atol=1e-10)


def test_zero_variance_neurons():
    u = RunningStats.of(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    s = RunningStats.of(torch.tensor([[0.0, 0.0], [0.0, 0.0]]))
    d = effect_size(u, s)
    assert d[0] == math.inf and d[1] == 0


def test_ratio_instead_ranks_by_the_selection_criterion_and_subsets_stay_inside(data):
    """`selection` decides what a ratio ranks by; the ES/SAS sets (the ES(SN-)/SAS(SN-) attack conditions)
    never reach outside the selected neurons."""
    d, delta = {}, {}
    for layer, (u, s) in data.items():
        su, ss = RunningStats.of(torch.tensor(u)), RunningStats.of(torch.tensor(s))
        d[layer], delta[layer] = effect_size(su, ss), activation_shift(su, ss)
    k = math.ceil(0.02 * 600)
    z = {l: torch.where(delta[l] > 0, zscore(delta[l]), -math.inf) for l in d}
    flat_z = np.concatenate([z[l].numpy() for l in sorted(z)])
    top_sas = set(np.argsort(-flat_z, kind="stable")[:k].tolist())
    flat_d = np.concatenate([d[l].numpy() for l in sorted(d)])
    top_es = set(np.argsort(-flat_d, kind="stable")[:k].tolist())
    assert top_sas != top_es, "the data must tell the two rankings apart"
    flat = lambda sets: {l * 200 + i for l, idx in sets.items() for i in idx}  # noqa: E731

    by_sas = select(d, delta, neuron_ratio=0.02, selection="sas")
    assert flat(by_sas.neurons) == top_sas
    assert flat(by_sas.sas) == top_sas
    by_es = select(d, delta, neuron_ratio=0.02, selection="es")
    union = select(d, delta, neuron_ratio=0.02, selection="union")
    assert flat(by_es.neurons) == flat(union.neurons) == top_es  # union ranks by effect size
    thr = select(d, delta)
    for sel in (by_sas, by_es, union):
        for layer in d:
            chosen = set(sel.neurons[layer])
            assert set(sel.es[layer]) <= chosen and set(sel.sas[layer]) <= chosen
    for layer in d:  # the other criterion's set: its threshold set within the chosen neurons
        assert by_es.sas[layer] == sorted(set(thr.sas[layer]) & set(by_es.neurons[layer]))
        assert by_sas.es[layer] == sorted(set(thr.es[layer]) & set(by_sas.neurons[layer]))
