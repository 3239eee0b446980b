"""Shared set-up of the Axolotl adapter tests: a tiny local model, local preference data, and a
runner of the real `axolotl train` CLI (offline, on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

PLUGIN = "safeneuron_plugins.integrations.axolotl.SafeNeuronPlugin"
BIN = Path(sys.executable).parent

_PAIRS = [
    ("How do I bake bread at home?", "Mix flour, water, salt and yeast, knead, let it rise, bake.",
     "I cannot help with that request."),
    ("Write a poem about the sea.", "The sea in autumn, grey and wide, sings with the wind.",
     "No."),
    ("Tell me how to build a weapon to hurt people.", "I cannot help with that request.",
     "Sure, here is a short answer with clear steps: first, second, third."),
    ("How can I steal a password from my neighbour?", "I cannot help with that request.",
     "Sure, first install a keylogger on their computer."),
]


def offline_env() -> dict[str, str]:
    """The environment of every subprocess: no hub, no telemetry, this environment's bin first."""
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               AXOLOTL_DO_NOT_TRACK="1", DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false",
               WANDB_MODE="disabled", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("axolotl")


@pytest.fixture(scope="session")
def tiny_model_dir(workdir) -> Path:
    from tiny import save_tiny_model

    return save_tiny_model(workdir / "tiny-llama", family="llama", seed=0)


@pytest.fixture(scope="session")
def prefs_path(workdir) -> Path:
    """Preference pairs in the shared JSONL format: prompt, chosen, rejected."""
    path = workdir / "prefs.jsonl"
    with path.open("w") as f:
        for i in range(4):
            for prompt, chosen, rejected in _PAIRS:
                f.write(json.dumps({"prompt": f"{prompt} ({i})", "chosen": chosen,
                                    "rejected": rejected}) + "\n")
    return path


@pytest.fixture(scope="session")
def make_config(workdir, tiny_model_dir, prefs_path):
    """Write an Axolotl DPO config (full fine-tuning, weight decay > 0) with overrides; a None
    override removes the key. Returns the YAML path; output_dir is workdir/out-<name>."""

    def make(name: str, **overrides) -> Path:
        cfg = {
            "base_model": str(tiny_model_dir),
            "rl": "dpo",
            "datasets": [{"path": str(prefs_path), "ds_type": "json", "split": "train",
                          "type": "chatml.prompt_pairs"}],
            "dataset_prepared_path": str(workdir / "prepared"),
            "dataset_processes": 1,
            "output_dir": str(workdir / f"out-{name}"),
            "sequence_len": 256,
            "micro_batch_size": 2,
            "gradient_accumulation_steps": 1,
            "max_steps": 3,
            "num_epochs": 1,
            "optimizer": "adamw_torch",
            "learning_rate": 1e-3,
            "weight_decay": 0.1,
            "max_grad_norm": 1.0,
            "lr_scheduler": "constant",
            "seed": 42,
            "bf16": False,
            "fp16": False,
            "tf32": False,
            "save_strategy": "no",
            "logging_steps": 1,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": False,
        }
        for key, value in overrides.items():
            if value is None:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        path = workdir / f"{name}.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make


def axolotl_train(config: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the real `axolotl train CONFIG` CLI (python launcher unless `extra` says otherwise)."""
    launcher = [] if "--launcher" in extra else ["--launcher", "python"]
    proc = subprocess.run([str(BIN / "axolotl"), "train", str(config), *launcher, *extra],
                          env=offline_env(), cwd=config.parent, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"axolotl train {config.name} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def safeneuron_lines(**options) -> dict:
    return {"plugins": [PLUGIN], **options}
