"""The shipped trl example runs as documented (on a tiny model and a tiny preference file)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from test_freeze_trl import frozen_rows
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask

ROOT = Path(__file__).resolve().parents[2]


def test_trl_example_script(tmp_path):
    model = save_tiny_model(tmp_path / "m", "llama")
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Tell me about bread {i}.", "chosen": "Bread is baked dough.",
                                          "rejected": "No."}) for i in range(8)))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "example_configs/trl/dpo_safeneuron.py"), "--data", str(data),
                           "--model", str(model), "--steps", "2", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = NeuronMask.load(out / "safeneuron_mask.safetensors")
    before = frozen_rows(transformers.AutoModelForCausalLM.from_pretrained(model), mask)
    after = frozen_rows(transformers.AutoModelForCausalLM.from_pretrained(out), mask)
    assert mask.num_neurons > 0
    assert all(torch.equal(before[k][0], after[k][0]) for k in before)


def test_trl_vlm_example_script(tmp_path):
    """The VLM example on a tiny Qwen2-VL and the shipped image preference set (LLaMA-Factory's example file)."""
    pytest.importorskip("PIL", reason="images need Pillow")
    from tiny import save_tiny_model

    model = save_tiny_model(tmp_path / "vlm", "qwen2_vl", remote_code=True)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "example_configs/trl/vlm_dpo_safeneuron.py"), "--model", str(model),
                           "--data", str(ROOT / "example_configs/llamafactory/vlm_preferences.jsonl"), "--steps", "1",
                           "--output-dir", str(out), "--trust-remote-code"],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    mask = NeuronMask.load(out / "safeneuron_mask.safetensors")
    before = frozen_rows(transformers.Qwen2VLForConditionalGeneration.from_pretrained(model), mask)
    after = frozen_rows(transformers.Qwen2VLForConditionalGeneration.from_pretrained(out), mask)
    assert mask.num_neurons > 0 and before
    assert all(torch.equal(before[k][0], after[k][0]) for k in before)
    assert any(not torch.equal(before[k][1], after[k][1]) for k in before), "the rest of those tensors trained"
