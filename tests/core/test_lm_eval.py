"""Capability through lm-evaluation-harness: `safeneuron capability --lm-eval` and
`compare --lm-eval` on a tiny model and the project's local example task (tests/data/lm_eval_tasks), offline.

The scores are checked against a hand computation with the model itself: for each item, the choice with the
highest summed log-probability of its tokens after "Question: ...\\nAnswer:" (lm_eval's `acc`), so scoring the
wrong model, or a pruned model when the unpruned one was asked for (and the reverse), fails.
"""

import json
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.cli import main
from safeneuron_plugins.fingerprint import fingerprint
from safeneuron_plugins.models import load_model
from safeneuron_plugins.prune import pruned

TASKS = Path(__file__).resolve().parents[1] / "data" / "lm_eval_tasks"
TASK = "safeneuron_everyday"
LIMIT = 6


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("lm_eval") / "llama", "llama")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def heavy_mask(tiny, tmp_path_factory):
    """Every MLP neuron of the first layer (a mask that changes this model's choices on the first items),
    saved with this model's fingerprint."""
    model, _ = tiny
    layers = find_mlp_layers(model)
    mask = NeuronMask({0: list(range(64))}, metadata={"fingerprint": fingerprint(model, layers)})
    path = tmp_path_factory.mktemp("mask") / "layer0.safetensors"
    mask.save(path)
    return mask, path


def items(n=LIMIT):
    rows = [json.loads(line) for line in (TASKS / f"{TASK}.jsonl").read_text().splitlines() if line.strip()]
    return rows[:n]


def by_hand(model, tok, mask=None, n=LIMIT):
    """Per item: each choice's summed log-probability after the prompt, and the accuracy of their argmax."""
    lls = []
    ctx = pruned(model, find_mlp_layers(model), mask) if mask is not None else nullcontext()
    with ctx, torch.inference_mode():
        for row in items(n):
            context = f"Question: {row['question']}\nAnswer:"
            head = tok(context)["input_ids"]
            scores = []
            for choice in row["choices"]:
                whole = tok(f"{context} {choice}")["input_ids"]
                assert whole[:len(head)] == head
                logp = F.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)
                scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(head), len(whole))))
            lls.append(scores)
    acc = sum(max(range(len(s)), key=s.__getitem__) == row["answer"] for s, row in zip(lls, items(n))) / n
    return lls, acc


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_scores_equal_a_hand_computation(tiny, heavy_mask):
    from safeneuron_plugins.evaluate.lm_eval_capability import lm_eval_scores

    model, tok = tiny
    mask, _ = heavy_mask
    before = weights(model)
    plain_ll, plain_acc = by_hand(model, tok)
    pruned_ll, pruned_acc = by_hand(model, tok, mask)
    assert plain_acc != pruned_acc, "the test needs a mask that changes the model's choices"

    res = lm_eval_scores(model, tok, TASK, include_path=TASKS, limit=LIMIT, samples=True, progress=False)
    task = res["tasks"][TASK]
    assert task["metrics"]["acc"]["value"] == pytest.approx(plain_acc)
    assert task["metrics"]["acc"]["stderr"] > 0 and "acc_norm" in task["metrics"]
    assert task["n"] == LIMIT and task["n_total"] == 16 and task["num_fewshot"] == 0
    got = [[ll for ll, _greedy in s["responses"]] for s in task["samples"]]
    assert got == [pytest.approx(s, abs=1e-4) for s in plain_ll]
    assert [s["target"] for s in task["samples"]] == [r["answer"] for r in items()]
    assert res["lm_eval_version"] and len(task["task_hash"]) == 64 and len(task["config_hash"]) == 64
    assert res["pruned_neurons"] == 0

    under = lm_eval_scores(model, tok, [TASK], mask=mask, include_path=TASKS, limit=LIMIT, samples=True,
                           progress=False)["tasks"][TASK]
    assert under["metrics"]["acc"]["value"] == pytest.approx(pruned_acc)
    assert [[ll for ll, _ in s["responses"]] for s in under["samples"]] == [pytest.approx(s, abs=1e-4) for s in pruned_ll]
    assert under["task_hash"] == task["task_hash"], "same documents, prompts and targets"
    # nothing stays pruned, the weights are bit-identical, and the model scores as before
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert by_hand(model, tok)[0] == plain_ll
    assert not model.training


def test_capability_cli(tiny, tiny_dir, heavy_mask, tmp_path, capsys):
    model, tok = tiny
    mask, mask_path = heavy_mask
    out = tmp_path / "r.json"
    assert main(["capability", str(tiny_dir), "--lm-eval", TASK, "--lm-eval-include", str(TASKS),
                 "--limit", str(LIMIT), "--out", str(out), "--quiet"]) == 0
    res = json.loads(out.read_text())
    plain = by_hand(model, tok)[1]
    assert res["model"] == str(tiny_dir) and res["mask"] is None
    assert res["tasks"][TASK]["metrics"]["acc"]["value"] == pytest.approx(plain)
    assert f"{TASK} acc" in capsys.readouterr().out

    pruned_out = tmp_path / "pruned.json"
    assert main(["capability", str(tiny_dir), "--lm-eval", TASK, "--lm-eval-include", str(TASKS),
                 "--limit", str(LIMIT), "--mask", str(mask_path), "--out", str(pruned_out), "--quiet"]) == 0
    res = json.loads(pruned_out.read_text())
    assert res["pruned_neurons"] == mask.num_neurons == 64 and res["mask"] == str(mask_path)
    assert res["tasks"][TASK]["metrics"]["acc"]["value"] == pytest.approx(by_hand(model, tok, mask)[1])
    assert res["tasks"][TASK]["metrics"]["acc"]["value"] != pytest.approx(plain)


def test_capability_errors_name_the_flag(tiny_dir, tmp_path, capsys, monkeypatch):
    def run(*extra):
        out = tmp_path / "e.json"
        code = main(["capability", str(tiny_dir), "--out", str(out), *extra])
        assert not out.exists()
        return code, capsys.readouterr().err

    code, err = run("--lm-eval", "safeneuron_everyda", "--lm-eval-include", str(TASKS))
    assert code == 2 and "--lm-eval" in err and "'safeneuron_everyda'" in err and TASK in err
    code, err = run("--lm-eval", "arc_eassy")
    assert code == 2 and "unknown lm-evaluation-harness task 'arc_eassy'" in err and "arc_easy" in err
    code, err = run("--lm-eval", TASK, "--lm-eval-include", str(tmp_path / "nowhere"))
    assert code == 2 and "--lm-eval-include" in err and "no such directory" in err
    code, err = run("--lm-eval", " , ")
    assert code == 2 and "--lm-eval" in err
    # a mask made for another model (another intermediate size)
    other = save_tiny_model(tmp_path / "wide", "llama", intermediate_size=96)
    wide, _ = load_model(str(other))
    layers = find_mlp_layers(wide)
    NeuronMask({0: [90]}, metadata={"fingerprint": fingerprint(wide, layers)}).save(tmp_path / "wide.safetensors")
    code, err = run("--lm-eval", TASK, "--lm-eval-include", str(TASKS), "--mask", str(tmp_path / "wide.safetensors"))
    assert code == 2 and "--mask" in err and "intermediate_size" in err
    # a mask identified on other weights of the same architecture: an error unless --allow-other-weights
    base, _ = load_model(str(save_tiny_model(tmp_path / "base", "llama", seed=1)))
    NeuronMask({0: [3]}, metadata={"fingerprint": fingerprint(base, find_mlp_layers(base))}
               ).save(tmp_path / "base.safetensors")
    code, err = run("--lm-eval", TASK, "--lm-eval-include", str(TASKS), "--mask", str(tmp_path / "base.safetensors"))
    assert code == 2 and str(tmp_path / "base.safetensors") in err and "--allow-other-weights" in err
    code, err = run("--lm-eval", TASK, "--lm-eval-include", str(TASKS), "--allow-other-weights")
    assert code == 2 and "--allow-other-weights applies to the mask of --mask" in err
    # lm_eval not installed
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    code, err = run("--lm-eval", TASK, "--lm-eval-include", str(TASKS))
    assert code == 2 and "--lm-eval" in err and "pip install 'safeneuron-plugins[lm-eval]'" in err


def test_compare_reports_lm_eval_scores(tiny, tiny_dir, tmp_path):
    model, tok = tiny
    out = tmp_path / "report"
    assert main(["compare", str(tiny_dir), "--limit", "2", "--max-new-tokens", "4", "--max-prompts", "8",
                 "--judge", "patterns", "--lm-eval", TASK, "--lm-eval-include", str(TASKS),
                 "--lm-eval-limit", str(LIMIT), "--lm-eval-pruned", "--out-dir", str(out), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())["models"][str(tiny_dir)]
    plain = res["lm_eval"]["tasks"][TASK]["metrics"]["acc"]
    assert plain["value"] == pytest.approx(by_hand(model, tok)[1])
    full = res["lm_eval_full"]
    assert full["pruned_neurons"] == res["safety_neurons"] > 0
    text = (out / "report.md").read_text()
    assert "## Capability (lm-evaluation-harness)" in text and f"{TASK} acc" in text
    assert f"{plain['value']:.3f} ± {plain['stderr']:.3f}" in text
    assert f"FULL(SN-), {full['pruned_neurons']} neurons" in text
    # HTML too; and --lm-eval-include without --lm-eval is an error naming the flag
    assert main(["compare", str(tiny_dir), "--limit", "2", "--max-new-tokens", "4", "--max-prompts", "8",
                 "--judge", "patterns", "--lm-eval", TASK, "--lm-eval-include", str(TASKS),
                 "--lm-eval-limit", "2", "--format", "html", "--out-dir", str(out / "html"), "--quiet"]) == 0
    assert "Capability (lm-evaluation-harness)" in (out / "html" / "report.html").read_text()
    assert main(["compare", str(tiny_dir), "--lm-eval-include", str(TASKS), "--out-dir", str(out / "x")]) == 2
