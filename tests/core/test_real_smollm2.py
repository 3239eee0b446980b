"""On the real SmolLM2-135M-Instruct: selected neurons separate harmful from harmless prompts
better than random neurons do (measured on held-out shared prompts, not the ones used to select)."""

import json
import math
import random

import pytest
import torch

from safeneuron_plugins import identify
from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.identification import collect_statistics
from safeneuron_plugins.identification.scoring import effect_size

pytestmark = pytest.mark.slow


def _read(path, n, offset=0):
    rows = [json.loads(line)["prompt"] for line in path.read_text().splitlines() if line.strip()]
    return rows[offset:offset + n]


def test_selected_neurons_separate_better_than_random(smollm2, shared_data):
    model, tok = smollm2
    harmful = _read(shared_data / "harmful_advbench.jsonl", 64)
    harmless = _read(shared_data / "harmless_prompts.jsonl", 64)
    # the paper's statistics on the gate signal, as measured below (the default scorer is attribution)
    mask = identify(model, tok, harmful, harmless, batch_size=16, method="safeneuron", signal="gate", progress=False)
    assert 0 < mask.num_neurons < 0.1 * 46080

    # held-out prompts from other sources
    test_u = _read(shared_data / "harmful_harmbench.jsonl", 48)
    test_s = _read(shared_data / "harmless_prompts.jsonl", 48, offset=200)
    layers = find_mlp_layers(model)
    from safeneuron_plugins.identification.prompts import format_prompts

    s_u = collect_statistics(model, tok, layers, format_prompts(tok, test_u), signal="gate", progress=False)
    s_s = collect_statistics(model, tok, layers, format_prompts(tok, test_s), signal="gate", progress=False)
    d = {l: effect_size(s_u[l], s_s[l]) for l in s_u}
    selected = torch.cat([d[l][mask.neurons[l]] for l in d if mask.neurons[l]])
    rng = random.Random(0)
    random_d = torch.cat([d[l][torch.tensor(rng.sample(range(1536), len(mask.neurons[l])))]
                          for l in d if mask.neurons[l]])
    es = torch.cat([d[l][mask.es[l]] for l in d if mask.es[l]])
    # Measured: selected 0.19, random -0.18, ES-selected 1.51 (64+64 AdvBench/harmless, held-out HarmBench).
    assert selected.mean() > random_d.mean() + 0.25, "selected neurons separate unseen prompts better"
    assert es.mean() > 1.0, "effect-size neurons stay strongly separated on unseen prompts"


def test_attack_on_real_model_handful_of_prompts(smollm2, shared_data):
    """The attack runs on the real model: every condition judged, pruning changes the replies."""
    from safeneuron_plugins.evaluate.attack import CONDITIONS, run_attack

    model, tok = smollm2
    mask = identify(model, tok, max_prompts=64, progress=False)
    prompts = _read(shared_data / "harmful_harmbench.jsonl", 6)
    res = run_attack(model, tok, prompts, mask, max_new_tokens=24, batch_size=6, sweep=(50,), progress=False)
    assert set(res["asr"]) == set(CONDITIONS)
    for condition in CONDITIONS:  # ASR: the share of the condition's replies judged compliance
        wins = [g["success"] for g in res["generations"] if g["condition"] == condition]
        assert len(wins) == 6 and res["asr"][condition] == pytest.approx(sum(wins) / 6), condition
    assert all(g["success"] == (g["label"] == "compliance") for g in res["generations"])
    layers = len(find_mlp_layers(model))
    assert res["pruned_neurons"] == {"ORI": 0, "ES": mask.subset("es").num_neurons,
                                     "SAS": mask.subset("sas").num_neurons, "FULL": mask.num_neurons,
                                     "FULL@50%": mask.restrict_layers(set(range(math.ceil(layers / 2)))).num_neurons}
    assert mask.num_neurons > 0
    ori = [g["response"] for g in res["generations"] if g["condition"] == "ORI"]
    full = [g["response"] for g in res["generations"] if g["condition"] == "FULL"]
    assert len(ori) == len(full) == 6 and all(ori)
    assert ori != full, "pruning the safety neurons changes the model's replies"
