"""FSDP2 (torch fully_shard, 2 CPU ranks with gloo): each rank freezes the rows of its own shard;
the gathered frozen rows are bit-identical after AdamW with weight decay and clipping."""

import torch
from multiproc import launch_two


def test_fsdp2_frozen_rows_exact(tmp_path):
    launch_two("torchrun", "fsdp2_worker.py", tmp_path)
    r = torch.load(tmp_path / "fsdp2.pt")
    assert r["world"] == 2 and sum(map(len, r["neurons"].values())) > 0
    checked = 0
    for layer, idx in r["neurons"].items():
        if not idx:
            continue
        for proj in ("gate_proj", "up_proj"):
            name = f"model.layers.{layer}.mlp.{proj}.weight"
            before, after = r["initial"][name], r["final"][name]
            assert torch.equal(before[idx], after[idx]), f"{name} frozen rows moved"
            rest = [i for i in range(before.shape[0]) if i not in idx]
            assert not torch.equal(before[rest], after[rest]), f"{name} other rows must train"
            # rows of both shards (0..31 on rank 0, 32..63 on rank 1) are exercised
            checked += len(idx)
    assert checked > 0
    shards = {i // 32 for layer_idx in r["neurons"].values() for i in layer_idx}
    assert shards == {0, 1}, "frozen rows live in both ranks' shards"
