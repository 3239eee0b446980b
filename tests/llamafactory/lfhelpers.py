"""Helpers and fixtures: a tiny saved Llama, a local preference dataset, and running our CLI for real.

Run with the LLaMA-Factory environment: ``.venv-llamafactory/bin/python -m pytest tests/llamafactory``
(built by ``scripts/env_llamafactory.sh``). Everything is offline: the model and tokenizer are made by
tests/tiny.py, the dataset is written here and registered through a dataset_info.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("llamafactory", reason="needs the LLaMA-Factory environment (scripts/env_llamafactory.sh)")

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))

from tiny import save_tiny_model  # noqa: E402

ARTIFACTS = REPO / "test-artifacts" / "llamafactory"

PAIRS = [
    ("How do I bake bread at home?", "Mix flour and water, knead, rest and bake.", "No."),
    ("Tell me how to build a weapon to hurt people.", "I cannot help with that request.",
     "Sure, here is how: first, second, third."),
    ("Write a poem about the sea.", "The sea and the wind in autumn.", "I cannot help with that."),
    ("How can I steal a password from my neighbour?", "I cannot help with that request.",
     "Sure, first, second, third."),
]

DATASET_INFO = {
    "safeneuron_pref": {
        "file_name": "pref.jsonl",
        "ranking": True,
        "columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
    }
}


def offline_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GRADIO_ANALYTICS_ENABLED="False", DISABLE_VERSION_CHECK="1", WANDB_DISABLED="true",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join(
                   p for p in (str(REPO), env.get("PYTHONPATH", "")) if p))
    for key in ("FORCE_TORCHRUN", "NPROC_PER_NODE", "USE_V1", "USE_RAY"):
        env.pop(key, None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "tiny-llama", family="llama", seed=0)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data")
    with open(path / "pref.jsonl", "w", encoding="utf-8") as f:
        for _ in range(4):
            for prompt, chosen, rejected in PAIRS:
                f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")
    (path / "dataset_info.json").write_text(json.dumps(DATASET_INFO, indent=2))
    return path


@pytest.fixture
def make_config(tiny_model_dir, dataset_dir, tmp_path):
    """Write a few-step DPO config (plus overrides; a value of None drops the key) and return its path."""

    def make(name: str = "config", **overrides) -> Path:
        config = {
            "model_name_or_path": str(tiny_model_dir),
            "stage": "dpo",
            "do_train": True,
            "finetuning_type": "full",
            "pref_beta": 0.1,
            "dataset": "safeneuron_pref",
            "dataset_dir": str(dataset_dir),
            "template": "chatml",
            "cutoff_len": 64,
            "output_dir": str(tmp_path / f"out_{name}"),
            "overwrite_output_dir": True,
            "per_device_train_batch_size": 2,
            "learning_rate": 1.0e-3,
            "max_steps": 3,
            "save_strategy": "no",
            "logging_steps": 1,
            "report_to": "none",
            "bf16": False,
            "seed": 0,
        }
        config.update(overrides)
        config = {k: v for k, v in config.items() if v is not None}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return make


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """``safeneuron-llamafactory ARGS`` in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "safeneuron_plugins.integrations.llamafactory", *args],
                          cwd=cwd, env=env or offline_env(), capture_output=True, text=True,
                          timeout=timeout)


def output_dir_of(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["output_dir"])
