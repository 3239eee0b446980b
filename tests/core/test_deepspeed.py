"""DeepSpeed ZeRO-2 and ZeRO-3 (all parameters partitioned, or the tiny model's parameters all persistent,
i.e. kept gathered) on 2 CPU ranks (gloo): identification on the policy gives one mask on every
rank, and the frozen rows are bit-identical after training in the model, in the fp32 master weights and
(zero) in Adam's first moment, while the other rows moved."""

import pytest
import torch
import transformers
from multiproc import launch_two
from test_freeze_trl import assert_frozen_exactly, frozen_rows
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask

pytest.importorskip("deepspeed")


def _with(model, state):
    model.load_state_dict(state, strict=False)
    return model


@pytest.mark.parametrize("stage,persistence", [(2, 0), (3, 0), (3, 10**5)],
                         ids=["zero2", "zero3-partitioned", "zero3-persistent"])
def test_deepspeed_zero_frozen_rows_exact(tmp_path, stage, persistence):
    path = save_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "out"
    out.mkdir()
    launch_two("torchrun", "deepspeed_worker.py", path, out, stage, persistence, timeout=900, DS_ACCELERATOR="cpu")
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert r0["world"] == r1["world"] == 2, "the run must really be distributed"
    assert r0["partitioned"] == (stage == 3)
    assert r0["neurons"] == r1["neurons"] and sum(map(len, r0["neurons"].values())) > 0
    mask = NeuronMask.load(out / "safeneuron_mask.safetensors")
    assert mask.neurons == r0["neurons"]
    initial = transformers.AutoModelForCausalLM.from_pretrained(path)
    before = frozen_rows(initial, mask)
    for r in (r0, r1):
        for what in ("weights", "master"):
            trained = _with(transformers.AutoModelForCausalLM.from_pretrained(path), r[what])
            assert_frozen_exactly(before, frozen_rows(trained, mask))
        # the gradient hook ran before DeepSpeed reduced the gradients: no first moment on frozen entries
        moments = frozen_rows(_with(transformers.AutoModelForCausalLM.from_pretrained(path), r["exp_avg"]), mask)
        for key, (rows, full, _, _) in moments.items():
            assert not rows.any(), f"{key}: frozen entries have a non-zero Adam moment"
            assert full.any()
    for name in r0["weights"]:
        assert torch.equal(r0["weights"][name], r1["weights"][name]), f"ranks diverged on {name}"
