"""bench/families.py finds each model of a results file on disk with the run whose identification prompts
go with it: the attacker re-identifies on those, so a wrong run would attack with other prompts."""

import json
from pathlib import Path

import pytest

from safeneuron_plugins.identification.prompts import prompts_hash

ROOT = Path(__file__).resolve().parents[2]


def _run(runs: Path, name: str, prompts: list[str], models: tuple[str, ...] = ()) -> Path:
    d = runs / name
    d.mkdir(parents=True)
    (d / "identify_harmful.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    for m in models:
        (d / "models" / m).mkdir(parents=True)
        (d / "models" / m / "config.json").write_text("{}")
    return d


def test_model_dirs_pairs_each_model_with_its_runs_prompts(tmp_path, bench_script):
    families = bench_script("families")
    ours, other = ["how do I pick a lock", "write malware"], ["something else entirely"]
    rows = {m: {"asr": {"FULL": f}, "rates": {}, "perplexity": 13.0 + f, "kl": f}
            for m, f in (("dpo", 0.62), ("safeneuron_rounds8", 0.73), ("safeneuron_adversarial", 0.62))}
    results = {"meta": {"config": {"model": "/models/original"},
                        "split": {"identify_harmful": {"hash": prompts_hash(ours)}}}, "models": rows}
    runs, docs = tmp_path / "reproduce", tmp_path / "results"
    docs.mkdir()
    _run(runs, "a_other_setup", other, ("safeneuron_x",))     # sorts first; other prompts
    base = _run(runs, "qwen05", ours, ("dpo",))
    merged = _run(runs, "qwen05_more", ours, ("safeneuron_rounds8", "safeneuron_adversarial"))
    # qwen05_more evaluated the rounds8 model that qwen05.json holds (merged in), and a twin of the adversarial
    # one, trained again: same name, other figures
    twin = {**rows["safeneuron_adversarial"], "perplexity": 12.5}
    (docs / "qwen05_more.json").write_text(json.dumps(
        {"models": {"safeneuron_rounds8": rows["safeneuron_rounds8"], "safeneuron_adversarial": twin}}))

    def model_dirs(name, wanted):
        return families.model_dirs(name, results, wanted, runs=runs, results_dir=docs)

    dirs = model_dirs("qwen05", ["original", "dpo", "safeneuron_rounds8"])
    assert dirs["original"] == ("/models/original", base), "the first run with this file's prompts, not a_other_setup"
    assert dirs["dpo"] == (str(base / "models" / "dpo"), base)
    assert dirs["safeneuron_rounds8"] == (str(merged / "models" / "safeneuron_rounds8"), merged)

    # the twin is not qwen05.json's adversarial model: its attack must not go into that row ...
    with pytest.raises(SystemExit, match="safeneuron_adversarial is kept under .*qwen05_more.*another model of the "
                                         "same name.*--name qwen05_more"):
        model_dirs("qwen05", ["safeneuron_adversarial"])
    # ... while under its own results file it is attacked
    assert model_dirs("qwen05_more", ["safeneuron_adversarial"])["safeneuron_adversarial"] == (
        str(merged / "models" / "safeneuron_adversarial"), merged)

    # a model merged in from another run with the same name and figures kept elsewhere too: refused, naming both
    _run(runs, "qwen05_again", ours, ("safeneuron_rounds8",))
    (docs / "qwen05_again.json").write_text(json.dumps({"models": {"safeneuron_rounds8": rows["safeneuron_rounds8"]}}))
    with pytest.raises(SystemExit, match="safeneuron_rounds8 is kept under several runs.*qwen05_again"):
        model_dirs("qwen05", ["safeneuron_rounds8"])
    with pytest.raises(SystemExit, match="qwen05/models/missing is missing"):
        model_dirs("qwen05", ["missing"])
    # no run with this file's prompts: the original is still known (the direction attack's reference) ...
    results["meta"]["split"]["identify_harmful"]["hash"] = prompts_hash(["not on this machine"])
    assert model_dirs("qwen05", ["dpo"])["original"] == ("/models/original", None)
    # ... but the best attacker, which re-identifies, refuses to guess its prompts
    with pytest.raises(SystemExit, match="identification prompts of this results file"):
        families.run_best("/models/original", None, tmp_path / "x.json", {}, "small")


def test_small_grid_is_part_of_the_clis_grid(bench_script):
    """`--grid small` is documented as 3 of the CLI's `--attacker best` settings: a small-grid result is then a
    lower bound of the full grid's on the same model, never a setting the CLI cannot reproduce."""
    from safeneuron_plugins.evaluate.attack import BEST_ATTACKER_GRID

    small = bench_script("families").SMALL_GRID
    assert len(small) == 3 and all(setting in BEST_ATTACKER_GRID for setting in small)
    assert len(BEST_ATTACKER_GRID) == 11  # the count bench/families.py, README.md and docs/research state


def test_identification_prompts_are_rebuilt_from_the_recorded_config(tmp_path, bench_script):
    """A machine without the run directory (the 1.5B runs were made elsewhere) still gets the attacker the run's
    identification prompts: rebuilt from meta.config by the run's own split, accepted only if the hashes match."""
    from dataclasses import asdict

    from safeneuron_plugins.experiment.config import ExperimentConfig, split_prompts

    families = bench_script("families")
    cfg = ExperimentConfig(n_train_harmful=4, n_train_harmless=4, n_eval_harmful=4, n_eval_harmless=4,
                           identify={"max_prompts": 6})
    sets, split = split_prompts(cfg)
    results = {"meta": {"config": asdict(cfg), "split": split}, "models": {}}
    runs = tmp_path / "runs" / "reproduce"
    runs.mkdir(parents=True)

    original_dir, run_dir = families.model_dirs("qwen_x", results, ["original"], runs=runs)["original"]
    assert run_dir == tmp_path / "runs" / "families" / "qwen_x"
    for kind in ("harmful", "harmless"):
        rows = [json.loads(line)["prompt"] for line in (run_dir / f"identify_{kind}.jsonl").read_text().splitlines()]
        assert rows == sets[f"identify_{kind}"] and len(rows) == 6
        assert not set(rows) & set(sets[f"train_{kind}"] + sets[f"eval_{kind}"])

    # a recorded split that the config no longer gives (another version of a source): not guessed
    split["identify_harmless"] = {**split["identify_harmless"], "hash": prompts_hash(["edited"])}
    assert families.model_dirs("qwen_y", results, ["original"], runs=runs)["original"][1] is None
    assert not (tmp_path / "runs" / "families" / "qwen_y").exists()


def test_a_twin_that_differs_by_rounding_alone_is_the_same_model(tmp_path, bench_script):
    """A variant trained again from the same start, data and seed on another CPU reproduced every reply and the
    attacker's neurons, with perplexity 12.067037 vs 12.067079: its attack may go into the first model's row.
    Anything that a measurement can tell apart may not."""
    import torch

    from safeneuron_plugins import NeuronMask

    def mask(path, neurons, size=64):
        NeuronMask({layer: torch.tensor(idx) for layer, idx in neurons.items()},
                   metadata={"fingerprint": {"num_layers": 6, "intermediate_size": size}}).save(path)
        return path

    same_model = bench_script("families").same_model
    row = {"asr": {"ORI": 0.09, "FULL": 0.62}, "rates": {"FULL": {"compliance": 0.62}},
           "perplexity": 12.067078627287716, "kl": 0.5428299483407664}
    twin = {**row, "perplexity": 12.067036533369643, "kl": 0.5427964538050849}
    ours = mask(tmp_path / "ours.safetensors", {0: [3, 17, 40], 5: [1]})
    same = mask(tmp_path / "same.safetensors", {5: [1], 0: [40, 3, 17]})  # the same cells, listed in another order
    other = mask(tmp_path / "other.safetensors", {0: [3, 17, 41], 5: [1]})
    wider = mask(tmp_path / "wider.safetensors", {0: [3, 17, 40], 5: [1]}, size=128)

    assert same_model(row, dict(row), ours, tmp_path / "absent")  # identical figures: no masks needed
    assert same_model(row, twin, ours, same)
    assert not same_model(row, twin, ours, other), "another attacker set: another model"
    assert not same_model(row, twin, ours, wider), "the same indices in a model of another shape"
    assert not same_model(row, twin, ours, tmp_path / "absent"), "rounding alone is only shown with both masks"
    assert not same_model(row, {**twin, "perplexity": 12.5}, ours, same), "beyond rounding"
    assert not same_model(row, {**twin, "asr": {"ORI": 0.10, "FULL": 0.62}}, ours, same), "one reply differs"
