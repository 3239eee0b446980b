"""bench/paired_kept.py compares a model of a later run with the first runs' models from what the repository keeps
(their per-prompt ORI replies and masks). A model trained again under a first run's name is compared with that
first model, not confused with it."""

import json

import torch

from safeneuron_plugins import NeuronMask

PROMPTS = [f"harmful prompt {i}" for i in range(6)]


def _replies(path, model, successes):
    path.write_text("".join(json.dumps({"model": model, "condition": "ORI", "prompt": p, "success": s,
                                        "label": "compliance" if s else "refusal"}) + "\n"
                            for p, s in zip(PROMPTS, successes)))


def _mask(path, neurons):
    NeuronMask({layer: torch.tensor(idx) for layer, idx in neurons.items()},
               metadata={"fingerprint": {"num_layers": 2, "intermediate_size": 8}}).save(path)


def test_a_retrained_model_is_compared_with_the_first_model_of_its_name(tmp_path, bench_script):
    paired_kept = bench_script("paired_kept")
    results, run = tmp_path / "results", tmp_path / "results" / "qwen05_more"
    (results / "qwen05_families").mkdir(parents=True)
    (results / "qwen05" / "masks").mkdir(parents=True)
    (run / "masks").mkdir(parents=True)
    first = {name: [True] * 6 for name in paired_kept.EARLIER}
    first["safeneuron_adversarial"] = [True, True, True, False, False, False]
    for name, successes in first.items():
        _replies(results / "qwen05_families" / f"{name}_direction.generations.jsonl", name, successes)
    _replies(run / "generations.jsonl", "safeneuron_adversarial", [False] * 6)
    _mask(results / "qwen05" / "masks" / "t0.safetensors", {0: [0, 1]})
    _mask(results / "qwen05" / "masks" / "attacker_dpo.safetensors", {0: [1, 2, 3]})
    _mask(results / "qwen05" / "masks" / "attacker_safeneuron_rounds.safetensors", {1: [0]})
    _mask(results / "qwen05" / "masks" / "attacker_safeneuron_adversarial.safetensors", {0: [3], 1: [5, 6]})
    _mask(run / "masks" / "attacker_safeneuron_adversarial.safetensors", {0: [1, 3], 1: [5]})
    _mask(run / "masks" / "frozen_safeneuron_adversarial.safetensors", {0: [0, 1]})

    lines = paired_kept.compare(run, "safeneuron_adversarial", results=results)
    vs = {line.split(", ORI")[0]: line for line in lines[:-1]}
    others = {f"safeneuron_adversarial vs {name}" for name in paired_kept.EARLIER if name != "safeneuron_adversarial"}
    assert set(vs) == others | {"safeneuron_adversarial vs safeneuron_adversarial (first run)"}
    assert "ORI: 0.00 vs 0.50, -0.50" in vs["safeneuron_adversarial vs safeneuron_adversarial (first run)"]
    assert "ORI: 0.00 vs 1.00, -1.00" in vs["safeneuron_adversarial vs dpo"]
    assert lines[-1] == ("safeneuron_adversarial: attacker's neurons 3, frozen 2; of the attacker's: in T0 1, in its "
                         "own frozen set 1, in dpo's attacker set 2, in safeneuron_rounds's attacker set 0, in "
                         "safeneuron_adversarial (first run)'s attacker set 2")
