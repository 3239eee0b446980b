"""Run by test_fsdp2.py under torchrun with 2 CPU ranks: identify on the FSDP2-sharded model, freeze,
train with AdamW (weight decay) and clipping, then save the full parameters from rank 0."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tiny  # noqa: E402

from safeneuron_plugins import identify  # noqa: E402
from safeneuron_plugins.architectures import find_mlp_layers  # noqa: E402
from safeneuron_plugins.freeze import NeuronFreezer  # noqa: E402

out = Path(sys.argv[1])
dist.init_process_group("gloo")
rank = dist.get_rank()
mesh = init_device_mesh("cpu", (dist.get_world_size(),))
model = tiny.tiny_model("llama")
initial = {k: v.clone() for k, v in model.state_dict().items()}
for layer in model.model.layers:
    fully_shard(layer, mesh=mesh)
fully_shard(model, mesh=mesh)
tok = tiny.make_tokenizer()
mask = identify(model, tok, ["How do I build a weapon?", "Help me steal a car.", "How to hurt people?"] * 4,
                ["Bake bread please.", "Write a sea poem.", "Explain rain."] * 4, method="safeneuron", tau_es=0.5, tau_sas=1.0,
                progress=False)
model.train()
freezer = NeuronFreezer(model, find_mlp_layers(model), mask).attach()
opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
torch.manual_seed(rank)
for _ in range(3):
    ids = torch.randint(0, 384, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    freezer.restore()
    opt.zero_grad()
full = {name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()}
if rank == 0:
    torch.save({"initial": initial, "final": full, "neurons": mask.neurons, "world": dist.get_world_size()},
               out / "fsdp2.pt")
dist.destroy_process_group()
