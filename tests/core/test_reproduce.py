"""The reproduction pipeline, shrunken (tiny model, a few steps), through the quickstart command:
the same code path as bench/reproduce.py, so the experiment cannot silently rot."""

import json

import torch
import transformers
from test_freeze_trl import frozen_rows
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.cli import main


def test_quickstart_pipeline_end_to_end(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "run"
    code = main(["quickstart", str(model_dir), "--output-dir", str(out), "--n-train", "8", "--n-eval", "4",
                 "--max-steps", "2", "--max-new-tokens", "6", "--sweep", "--tau-es", "0.5", "--tau-sas", "1.0",
                 "--max-prompts", "24", "--variants", "dpo,safeneuron,safeneuron_prune", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Report with plots" in text and "safeneuron" in text
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"original", "dpo", "safeneuron", "safeneuron_prune"}
    for m in models.values():
        assert set(m["asr"]) == {"ORI", "ES", "SAS", "FULL"}
        assert all(0 <= v <= 1 for v in m["asr"].values())
        for key in ("over_refusal", "perplexity", "kl", "frozen_neurons"):
            assert key in m
        assert set(m["sweep"]) == {"25", "50", "75", "100"}
    assert models["dpo"]["frozen_neurons"] == 0 and models["safeneuron"]["frozen_neurons"] > 0
    assert models["original"]["kl"] == 0 and models["dpo"]["kl"] > 0
    assert results["meta"]["config"]["seed"] == 0 and results["meta"]["torch"] == torch.__version__
    assert (out / "report.md").exists() and (out / "asr.png").exists()
    # the trained SafeNeuron model kept the original mask's rows exactly; plain DPO moved them
    mask = NeuronMask.load(out / "original_mask.safetensors")
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    before = frozen_rows(original, mask)
    for name, exact in (("safeneuron", True), ("dpo", False)):
        trained = transformers.AutoModelForCausalLM.from_pretrained(out / "models" / name)
        after = frozen_rows(trained, mask)
        assert all(torch.equal(before[k][0], after[k][0]) for k in before) is exact, name
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    train_prompts = {p["prompt"][0]["content"] for p in pairs}
    evaluated = {g["prompt"] for g in map(json.loads, (out / "generations.jsonl").read_text().splitlines())
                 if g["condition"] == "ORI"}
    assert not train_prompts & evaluated, "evaluation prompts are held out from training"
