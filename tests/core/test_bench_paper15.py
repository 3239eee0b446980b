"""bench/paper15.py, the paper15 experiment's stages after training, on a tiny experiment: the robustness curve
(three rankings, screened replies kept), the best attacker (grid screened, the fewest-refusal setting in full) and
results.json in the protocol's shape with the primary paired comparison."""

import json

import pytest
import torch
from tiny import save_tiny_model

from safeneuron_plugins.experiment import ExperimentConfig, run_experiment


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("paper15")
    model_dir = save_tiny_model(tmp / "m", "llama")
    stats = {"method": "safeneuron", "tau_es": 0.5, "tau_sas": 1.0, "max_prompts": 24}
    cfg = ExperimentConfig(model=str(model_dir), out_dir=str(tmp / "run"), n_train_harmful=4, n_train_harmless=4,
                           n_eval_harmful=6, n_eval_harmless=4, max_steps=1, max_new_tokens=4, judge="patterns",
                           variants=["dpo", "safeneuron"], identify=stats, control_seeds=[0],
                           extra_attackers={"attribution": {"method": "attribution", "max_prompts": 24}},
                           progress=False)
    run_experiment(cfg)
    return tmp / "run"


def test_curve_best_and_results(work, bench_script):
    paper15 = bench_script("paper15")
    names = ["original", "dpo", "safeneuron"]
    paper15.run_curve(work, names, (0.05, 0.2), tokens=3)
    total = 3 * 64  # the tiny model's MLP neurons
    for name in names:
        points = json.loads((work / "curve" / f"{name}.json").read_text())["points"]
        assert sorted((p["share"], p["ranking"]) for p in points) == sorted(
            (s, r) for s in (0.05, 0.2) for r in ("paper", "attribution", "random"))
        for p in points:
            assert p["n"] == len(p["replies"]) == 6
            assert p["asr"] == pytest.approx(sum(not r["refused"] for r in p["replies"]) / 6)
            assert p["pruned_neurons"] == round(p["share"] * total) if p["ranking"] == "random" else \
                0 < p["pruned_neurons"] <= round(p["share"] * total) + 1
    paper15.run_curve(work, names, (0.05, 0.2), tokens=3)  # resumes: nothing left to do
    assert len(json.loads((work / "curve" / "dpo.json").read_text())["points"]) == 6

    grid = paper15.BEST_ATTACKER_GRID[:2] + paper15.BEST_ATTACKER_GRID[-2:]  # attribution and statistics settings
    paper15.run_best(work, ["dpo"], tokens=4, grid=grid)
    best = json.loads((work / "best" / "dpo.json").read_text())
    assert [g["setting"] for g in best["grid"]] == list(grid)
    assert best["full"]["setting"] == min(best["grid"], key=lambda g: g["refused"])["setting"]
    assert best["full"]["asr"] == pytest.approx(sum(r["success"] for r in best["full"]["replies"]) / 6)

    data = paper15.assemble(work, ("safeneuron", "dpo"))
    dpo = data["models"]["dpo"]
    assert set(dpo["attacks"]) == {"paper", "attribution", "best"}
    assert set(dpo["attacks"]["paper"]) == {"ORI", "ES", "SAS", "FULL"}
    assert {"asr", "n", "ci95", "pruned_neurons"} <= set(dpo["attacks"]["paper"]["FULL"])
    assert dpo["random"]["pruned_neurons"] == dpo["attacks"]["paper"]["FULL"]["pruned_neurons"]
    assert len(dpo["curve"]) == 6 and "curve" in data["models"]["original"]
    primary = data["primary"]
    evaluations = {n: json.loads((work / "evaluations" / f"{n}.json").read_text()) for n in ("dpo", "safeneuron")}
    full = {n: [g["success"] for g in e["generations"] if g["condition"] == "FULL"] for n, e in evaluations.items()}
    assert primary["n"] == 6 and primary["diff"] == pytest.approx((sum(full["safeneuron"]) - sum(full["dpo"])) / 6)
    assert primary["ci95"][0] <= primary["diff"] <= primary["ci95"][1]


def test_pilot_rule_takes_the_first_candidate_on_target_else_the_lowest(work, bench_script, tmp_path, capsys):
    """The learning-rate pilot's registered rule, on results files of the experiment's own shape: candidates in order,
    the first whose plain-DPO ORI ASR is <= 0.10 is taken; with every candidate run and none on target, the lowest;
    only candidates whose perplexity stays within 5x the original's are eligible (else the paper's 5e-6),
    and then one run on refusal-only safety pairs at that rate, whose pairs are taken only when its ORI is lower,
    paired over the dev prompts (McNemar p < 0.05); until then the next run's command is printed (and nothing is
    run without --run)."""
    paper15 = bench_script("paper15")
    real = json.loads((work / "results.json").read_text())
    replies = [json.loads(line) for line in (work / "generations.jsonl").read_text().splitlines()]
    dev = [r for r in replies if r["model"] == "dpo" and r["condition"] == "ORI"]
    assert len(dev) == 6

    def write(name, asr, successes=None, perplexity_ratio=1.5):
        data = json.loads(json.dumps(real))
        data["models"]["dpo"]["asr"]["ORI"] = asr
        data["models"]["dpo"]["perplexity"] = perplexity_ratio * data["models"]["original"]["perplexity"]
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
        if successes is not None:
            (tmp_path / name).mkdir(exist_ok=True)
            (tmp_path / name / "generations.jsonl").write_text("".join(
                json.dumps({**r, "success": bool(s)}) + "\n" for r, s in zip(dev, successes)))

    def lr(rate):
        return paper15.PILOT_NAME.format(rate)

    state = paper15.pilot_decision(tmp_path)
    assert state["rows"] == [] and state["settled"] is None and state["next"] == (lr("5e-6"), "5e-6", "refusal_or_evasive")
    write(lr("5e-6"), 0.40)
    state = paper15.pilot_decision(tmp_path)
    assert state["settled"] is None and state["next"][1] == "2e-5" and [r[:2] for r in state["rows"]] == [("5e-6", 0.40)]
    assert paper15.run_pilot(tmp_path, run=False, hours=0) == 0
    assert "--name paper15_pilot_other_lr2e-5 --learning-rate 2e-5" in capsys.readouterr().out
    write(lr("2e-5"), 0.10, perplexity_ratio=6.0)  # on target, but capability lost (deviation 5): not taken
    state = paper15.pilot_decision(tmp_path)
    assert state["settled"] is None and state["next"][1] == "5e-5" and state["rows"][1][4:] == (6.0, False)
    assert paper15.run_pilot(tmp_path, run=True, hours=0) == 3  # --hours spent: the next run is not started
    assert "not eligible" in capsys.readouterr().out and not (tmp_path / f"{lr('5e-5')}.json").exists()
    write(lr("2e-5"), 0.10)
    state = paper15.pilot_decision(tmp_path)  # on target: 5e-5 is never run, the registered safety pairs stay
    assert (state["settled"], state["safety_pairs"], state["next"]) == ("2e-5", "refusal_or_evasive", None) and state["reached"]
    write(lr("5e-5"), 0.05, perplexity_ratio=30.0)  # lowest ORI but capability lost: the eligible lowest is taken
    write(lr("2e-5"), 0.50)
    assert paper15.pilot_decision(tmp_path)["settled"] == "5e-6"
    write(lr("5e-6"), 0.40, perplexity_ratio=5.5)  # none eligible: the paper's rate
    write(lr("2e-5"), 0.30, perplexity_ratio=8.0)
    assert paper15.pilot_decision(tmp_path)["settled"] == "5e-6"
    write(lr("5e-6"), 0.40)
    write(lr("2e-5"), 0.30, successes=[1] * 6)
    write(lr("5e-5"), 0.35)
    state = paper15.pilot_decision(tmp_path)
    assert state["settled"] == "2e-5" and not state["reached"] and len(state["rows"]) == 3 and state["safety_pairs"] is None
    assert state["next"] == (paper15.PILOT_REFUSAL_NAME.format("2e-5"), "2e-5", "refusal")
    assert paper15.run_pilot(tmp_path, run=False, hours=0) == 0
    out = capsys.readouterr().out
    assert "no eligible candidate reached" in out and "--safety-pairs-chosen refusal --max-train-minutes" in out
    refusal = paper15.PILOT_REFUSAL_NAME.format("2e-5")
    write(refusal, 0.5, successes=[1, 0, 1, 0, 1, 0])  # 3 fewer of 6: p 0.25, not taken
    state = paper15.pilot_decision(tmp_path)
    assert state["safety_pairs"] == "refusal_or_evasive" and state["pairs_test"]["diff"] == pytest.approx(-0.5)
    write(refusal, 0.0, successes=[0] * 6)  # 6 fewer of 6: exact McNemar p 0.031
    state = paper15.pilot_decision(tmp_path)
    assert state["safety_pairs"] == "refusal" and state["pairs_test"]["p_value"] < 0.05
    assert paper15.run_pilot(tmp_path, run=True, hours=0) == 0
    assert "settled: learning rate 2e-5, safety pairs refusal" in capsys.readouterr().out

    probe = tmp_path / "probe.json"  # the 1.5B command needs the settled pilot and a probe at its rate
    with pytest.raises(SystemExit, match="probe --learning-rate 2e-5"):
        paper15.experiment_command(tmp_path, probe)
    probe.write_text(json.dumps({"learning_rate": 5e-6, "embedding": "trained"}))
    with pytest.raises(SystemExit, match="probed learning rate 5e-06, the pilot settled 2e-5"):
        paper15.experiment_command(tmp_path, probe)
    probe.write_text(json.dumps({"learning_rate": 2e-5, "embedding": "trained"}))
    command = paper15.experiment_command(tmp_path, probe)
    assert command[2:] == ["--recipe", "paper15", "--learning-rate", "2e-5", "--safety-pairs-chosen", "refusal"]
    probe.write_text(json.dumps({"learning_rate": 2e-5, "embedding": "frozen (--freeze-embeddings)"}))
    assert paper15.experiment_command(tmp_path, probe)[-1] == "--freeze-embeddings"
    probe.write_text(json.dumps({"learning_rate": 2e-5, "embedding": "trained", "gradient_accumulation": 2}))
    assert paper15.experiment_command(tmp_path, probe)[-3:] == ["refusal", "--gradient-accumulation", "2"]
    probe.write_text(json.dumps({"learning_rate": 2e-5, "embedding": None, "finished": False}))
    with pytest.raises(SystemExit, match="has not tried every setting it needs yet"):
        paper15.experiment_command(tmp_path, probe)
    probe.write_text(json.dumps({"learning_rate": 2e-5, "embedding": None, "limit_gb": 22.0, "attempts": []}))
    with pytest.raises(SystemExit, match="no probed configuration fits 22.0 GiB"):
        paper15.experiment_command(tmp_path, probe)
    (tmp_path / f"{refusal}.json").unlink()
    with pytest.raises(SystemExit, match="pilot is not settled"):
        paper15.experiment_command(tmp_path, probe)


def test_probe_trains_two_steps_on_full_length_pairs_and_applies_the_memory_rule(bench_script, tmp_path):
    """The protocol's probe: pairs that fill the recipe's 256-token limit (prompt and reply together), two optimizer
    steps of the paper15 recipe (8-bit AdamW, reference log-probs precomputed), its figures written, and the rule: the
    embedding is trained unless that attempt exceeds the limit, then frozen; an attempt above the limit is stopped
    (not left to the kernel's out-of-memory kill), and with none fitting the 1.5B command is refused."""
    import transformers

    paper15 = bench_script("paper15")
    model_dir = save_tiny_model(tmp_path / "m", "llama", hidden_size=64, intermediate_size=128)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    rows = paper15.probe_pairs(tok, 4, 256)
    for row in rows:
        text = tok.apply_chat_template(row["prompt"] + row["rejected"], tokenize=False)
        assert len(tok(text, add_special_tokens=False)["input_ids"]) >= 256
    result = paper15.run_probe(str(model_dir), 1e-3, tmp_path / "w", out=tmp_path / "probe.json")
    assert json.loads((tmp_path / "probe.json").read_text()) == result
    assert result["steps"] == 2 and result["optim"] == "adamw_bnb_8bit" and result["max_length"] == 256
    assert [(a["embedding"], a["gradient_accumulation"]) for a in result["attempts"]] == [("trained", 1)]  # it fits
    assert 0 < result["peak_rss_gb"] and (result["embedding"], result["gradient_accumulation"]) == ("trained", 1)
    assert result["finished"] and result["allocator"] == paper15.ALLOCATOR
    assert [p["phase"] for p in result["attempts"][0]["phases"]].count("optimizer step done") == 2

    none = paper15.run_probe(str(model_dir), 1e-3, tmp_path / "w2", limit_gb=0.05, out=tmp_path / "none.json")
    assert [(a["embedding"], a["gradient_accumulation"], a["fits"], a["ended"]) for a in none["attempts"]] == [
        (e, k, False, "stopped above the limit") for e, k in paper15.PROBE_ATTEMPTS]
    assert none["embedding"] is None and all(a["peak_rss_gb"] >= 0.05 for a in none["attempts"])
    assert not (tmp_path / "w2" / "trained_x1" / "facts.json").exists()  # stopped before it finished
    again = paper15.run_probe(str(model_dir), 1e-3, tmp_path / "w4", limit_gb=0.05, out=tmp_path / "none.json")
    assert again["attempts"] == none["attempts"] and not (tmp_path / "w4" / "trained_x1").exists()  # kept, not redone
    assert paper15.probe_decision([{"embedding": "trained", "fits": False}, {"embedding": "frozen", "fits": False},
                                   {"embedding": "trained", "gradient_accumulation": 2, "fits": True}]) == \
        {"embedding": "trained", "gradient_accumulation": 2}

    # the frozen attempt trains everything but the (tied) embedding, which stays bit-identical under 8-bit AdamW
    # with weight decay
    frozen = paper15.run_probe(str(model_dir), 1e-2, tmp_path / "w3", settings=(("frozen", 2),))
    assert (frozen["embedding"], frozen["gradient_accumulation"]) == ("frozen (--freeze-embeddings)", 2)
    assert [p["phase"] for p in frozen["attempts"][0]["phases"]].count("micro-batch backward done") == 2  # 1 of 2 each
    before = transformers.AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    after = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "w3" / "frozen_x2" / "probe").state_dict()
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
    assert not torch.equal(before["model.layers.0.mlp.up_proj.weight"], after["model.layers.0.mlp.up_proj.weight"])
