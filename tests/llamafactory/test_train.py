"""End to end: `safeneuron-llamafactory train` runs real LLaMA-Factory DPO on a tiny local model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from lfhelpers import offline_env, output_dir_of, run_cli
from safetensors.torch import load_file

from safeneuron_plugins import NeuronMask

MASK = "safeneuron_mask.safetensors"
FREEZE = {"safeneuron_neuron_ratio": 0.1, "safeneuron_max_prompts": 16}


def _assert_frozen_exactly(initial: dict, trained: dict, neurons: dict[int, list[int]]) -> None:
    assert neurons and any(neurons.values()), "no safety neurons were selected"
    for layer, rows in neurons.items():
        for proj in ("gate_proj", "up_proj"):
            key = f"model.layers.{layer}.mlp.{proj}.weight"
            others = [i for i in range(initial[key].shape[0]) if i not in set(rows)]
            assert torch.equal(initial[key][rows], trained[key][rows]), f"frozen rows of {key} moved"
            assert not torch.equal(initial[key][others], trained[key][others]), f"{key} did not train"
    changed = [k for k in initial if "mlp" not in k and not torch.equal(initial[k], trained[k])]
    assert changed, "no other weight changed"


def _check_ok(result) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def test_safeneuron_stage_full_finetuning(make_config, tiny_model_dir, tmp_path):
    config = make_config("full", stage="safeneuron_dpo", **FREEZE)
    _check_ok(run_cli("train", str(config), cwd=tmp_path))
    out = output_dir_of(config)
    assert (out / MASK).is_file()
    neurons = NeuronMask.load(out / MASK).neurons
    _assert_frozen_exactly(load_file(tiny_model_dir / "model.safetensors"),
                           load_file(out / "model.safetensors"), neurons)


def test_dpo_with_freeze_and_lora(make_config, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = make_config("lora", stage="dpo", finetuning_type="lora", lora_target="all", lora_rank=4,
                         safeneuron_freeze=True, **FREEZE)
    _check_ok(run_cli("train", str(config), cwd=tmp_path))
    out = output_dir_of(config)
    assert (out / "adapter_model.safetensors").is_file() and (out / MASK).is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    initial = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, out).merge_and_unload().state_dict()
    neurons = NeuronMask.load(out / MASK).neurons
    for layer, rows in neurons.items():  # LoRA trains the MLP projections only where not frozen
        for proj in ("gate_proj", "up_proj"):
            key = f"model.layers.{layer}.mlp.{proj}.weight"
            others = [i for i in range(initial[key].shape[0]) if i not in set(rows)]
            assert torch.equal(initial[key][rows], merged[key][rows]), f"frozen rows of {key} moved"
            assert not torch.equal(initial[key][others], merged[key][others]), f"{key} did not train"


def test_without_safeneuron_keys_runs_exactly_like_llamafactory(make_config, tmp_path):
    """Parity: our command and LLaMA-Factory's own launcher give bit-identical weights, no mask."""
    ours = make_config("ours")
    theirs = make_config("theirs")
    _check_ok(run_cli("train", str(ours), cwd=tmp_path))
    # LLaMA-Factory's own CLI (`llamafactory-cli train`), in a process that only gets the torchaudio
    # stand-in this CPU environment needs (see integrations/llamafactory/compat.py).
    code = ("import sys; from safeneuron_plugins.integrations.llamafactory.compat import "
            "ensure_torchaudio_importable as e; e(); from llamafactory.cli import main; "
            "sys.argv = ['llamafactory-cli', 'train', sys.argv[1]]; main()")
    result = subprocess.run([sys.executable, "-c", code, str(theirs)], cwd=tmp_path, env=offline_env(),
                            capture_output=True, text=True, timeout=300)
    _check_ok(result)
    a = load_file(output_dir_of(ours) / "model.safetensors")
    b = load_file(output_dir_of(theirs) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (output_dir_of(ours) / MASK).exists()
    losses = [json.loads(line).get("loss") for line in
              (output_dir_of(ours) / "trainer_log.jsonl").read_text().splitlines()]
    assert losses == [json.loads(line).get("loss") for line in
                      (output_dir_of(theirs) / "trainer_log.jsonl").read_text().splitlines()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the 2-process run is the CPU (gloo) variant")
def test_torchrun_launch_runs_our_callback_on_every_rank(make_config, tiny_model_dir, tmp_path):
    """FORCE_TORCHRUN: LLaMA-Factory would re-exec its own launcher; we re-exec ours on each rank."""
    config = make_config("ddp", stage="safeneuron_dpo", per_device_train_batch_size=1, max_steps=2,
                         ddp_backend="gloo", **FREEZE)
    env = offline_env(FORCE_TORCHRUN="1", NPROC_PER_NODE="2", OMP_NUM_THREADS="1")
    result = run_cli("train", str(config), cwd=tmp_path, env=env)
    _check_ok(result)
    assert "world size: 2" in result.stdout + result.stderr
    out = output_dir_of(config)
    neurons = NeuronMask.load(out / MASK).neurons
    _assert_frozen_exactly(load_file(tiny_model_dir / "model.safetensors"),
                           load_file(out / "model.safetensors"), neurons)


def test_example_config_runs_with_command_line_overrides(tiny_model_dir, tmp_path):
    """example_configs/llamafactory as shipped (dataset_info.json + JSONL), on the tiny model."""
    from lfhelpers import REPO

    out = tmp_path / "out_example"
    result = run_cli("train", "example_configs/llamafactory/smollm2_safeneuron_dpo.yaml",
                     f"model_name_or_path={tiny_model_dir}", f"output_dir={out}", "max_steps=2",
                     "cutoff_len=64", "preprocessing_num_workers=1", "gradient_accumulation_steps=1",
                     "safeneuron_neuron_ratio=0.1", "safeneuron_max_prompts=16", cwd=REPO)
    _check_ok(result)
    neurons = NeuronMask.load(out / MASK).neurons
    _assert_frozen_exactly(load_file(tiny_model_dir / "model.safetensors"),
                           load_file(out / "model.safetensors"), neurons)
