"""Two CPU processes under `accelerate launch`: identical masks and bit-identical frozen rows on every rank."""

import torch
import transformers
from multiproc import launch_two
from test_freeze_trl import frozen_rows
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask


def test_two_process_ddp(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "out"
    out.mkdir()
    launch_two("accelerate", "ddp_worker.py", path, out)
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["world"] == r1["world"] == 2, "the run must really be distributed"
    assert r0["neurons"] == r1["neurons"] and sum(map(len, r0["neurons"].values())) > 0
    for name in r0["state"]:
        assert torch.equal(r0["state"][name], r1["state"][name]), f"ranks diverged on {name}"
    mask = NeuronMask.load(out / "safeneuron_mask.safetensors")
    assert mask.neurons == r0["neurons"]
    initial = transformers.AutoModelForCausalLM.from_pretrained(path)
    trained = transformers.AutoModelForCausalLM.from_pretrained(path)
    trained.load_state_dict(r0["state"])
    before, after = frozen_rows(initial, mask), frozen_rows(trained, mask)
    assert all(torch.equal(before[k][0], after[k][0]) for k in before)
    assert any(not torch.equal(before[k][1], after[k][1]) for k in before)
