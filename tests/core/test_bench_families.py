"""bench/families.py finds each model of a results file on disk with the run whose identification prompts
go with it: the attacker re-identifies on those, so a wrong run would attack with other prompts."""

import json
from pathlib import Path

import pytest

from safeneuron_plugins.identify.prompts import prompts_hash

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
    results = {"meta": {"config": {"model": "/models/original"},
                        "split": {"identify_harmful": {"hash": prompts_hash(ours)}}}}
    runs = tmp_path / "reproduce"
    _run(runs, "a_other_setup", other, ("safeneuron_x",))     # sorts first; other prompts
    base = _run(runs, "qwen05", ours, ("dpo",))
    merged = _run(runs, "qwen05_more", ours, ("safeneuron_rounds8",))

    dirs = families.model_dirs("qwen05", results, ["original", "dpo", "safeneuron_rounds8"], runs=runs)
    assert dirs["original"] == ("/models/original", base), "the first run with this file's prompts, not a_other_setup"
    assert dirs["dpo"] == (str(base / "models" / "dpo"), base)
    assert dirs["safeneuron_rounds8"] == (str(merged / "models" / "safeneuron_rounds8"), merged)

    # a model merged in from another run with the same name as one kept elsewhere: refused, naming both
    _run(runs, "qwen05_again", ours, ("safeneuron_rounds8",))
    with pytest.raises(SystemExit, match="safeneuron_rounds8 is kept under several runs.*qwen05_again"):
        families.model_dirs("qwen05", results, ["safeneuron_rounds8"], runs=runs)
    with pytest.raises(SystemExit, match="qwen05/models/missing is missing"):
        families.model_dirs("qwen05", results, ["missing"], runs=runs)
    # no run with this file's prompts: the original is still known (the direction attack's reference) ...
    results["meta"]["split"]["identify_harmful"]["hash"] = prompts_hash(["not on this machine"])
    assert families.model_dirs("qwen05", results, ["dpo"], runs=runs)["original"] == ("/models/original", None)
    # ... but the best attacker, which re-identifies, refuses to guess its prompts
    with pytest.raises(SystemExit, match="identification prompts of this results file"):
        families.run_best("/models/original", None, tmp_path / "x.json", {}, "small")
