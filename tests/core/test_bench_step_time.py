"""bench/step_time.py times a run's recipe with gradient checkpointing on and off, in fresh processes. A run's
experiment.json does not hold the variants' re-identification intervals, so the re-identifying variants take
theirs from the command line, and without one it stops before any process trains."""

import json
from dataclasses import asdict

import pytest
from test_reproduce import _variant_setup

from safeneuron_plugins.experiment import ExperimentConfig
from safeneuron_plugins.identification.prompts import load_prompts


def _run_dir(tmp_path):
    """What bench/reproduce.py leaves in runs/reproduce/NAME after its pairs stage, for a tiny model."""
    model_dir, pairs, ident, _, mask_path = _variant_setup(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    cfg = ExperimentConfig(model=str(model_dir), batch_size=4, learning_rate=5e-3, identify=ident)
    (run / "experiment.json").write_text(json.dumps(asdict(cfg)))
    (run / "pairs.jsonl").write_text(pairs.read_text())
    (run / "original_mask.safetensors").write_bytes(mask_path.read_bytes())
    for kind in ("harmful", "harmless"):
        prompts = load_prompts(f"builtin:{kind}")[:24]
        (run / f"identify_{kind}.jsonl").write_text("".join(json.dumps({"prompt": p.text}) + "\n" for p in prompts))
    return run


def test_step_time_runs_a_reidentifying_variant_given_its_interval(tmp_path, capsys, bench_script):
    step_time = bench_script("step_time")
    run = _run_dir(tmp_path)
    with pytest.raises(SystemExit, match="reidentify_steps > 0"):
        step_time.main(["--run", str(run), "--variant", "safeneuron_rounds", "--steps", "2"])
    assert "on:" not in capsys.readouterr().out, "no process was started"
    step_time.main(["--run", str(run), "--variant", "safeneuron_rounds", "--steps", "2", "--reidentify-steps", "1"])
    out = capsys.readouterr().out
    assert out.count("'steps': 2") == 2, out  # one process with checkpointing on, one off, each trained 2 steps
    assert "off/on = " in out
    assert [p.name for p in run.iterdir() if p.is_dir()] == [], "the trained models went with their temp directory"
