"""Run by test_deepspeed.py under `torchrun --nproc_per_node 2`: trl DPO with DeepSpeed ZeRO-<stage> on CPU
(gloo), SafeNeuron identifying on the policy and freezing; saves per-rank gathered weights, fp32 master
weights and Adam first moments."""

import contextlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import deepspeed  # noqa: E402
import trl  # noqa: E402
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state  # noqa: E402
from safeneuron_plugins.integrations.hf import SafeNeuronCallback  # noqa: E402
from test_freeze_trl import IDENT, preference_data  # noqa: E402

model_dir, out, stage, persistence = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
# On CPU accelerate leaves a DeepSpeed run at one process unless its state is built with a backend
# (GPU runs do not need this); the Trainer then uses this state.
os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
PartialState(backend="gloo")
# persistence: ZeRO-3 keeps parameters below this size gathered on every rank (0: all partitioned)
ds_config = {"zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": persistence},
             "train_micro_batch_size_per_gpu": 2,
             "gradient_accumulation_steps": 2, "gradient_clipping": 1.0, "bf16": {"enabled": False}}
args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=3,
                     learning_rate=5e-3, weight_decay=0.1, max_grad_norm=1.0, report_to="none", save_strategy="no",
                     seed=0, bf16=False, deepspeed=ds_config, accelerator_config={"use_configured_state": True})
# created after the DeepSpeed arguments, so that ZeRO-3 partitions the weights as they load
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
tok = transformers.AutoTokenizer.from_pretrained(model_dir)
cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=preference_data(),
                         processing_class=tok, callbacks=[cb])
trainer.train()
rank, world = dist.get_rank(), dist.get_world_size()
weights, master, moment = {}, {}, {}
for name, p in model.named_parameters():
    gather = deepspeed.zero.GatheredParameters([p]) if hasattr(p, "ds_id") else contextlib.nullcontext()
    with gather:
        weights[name] = p.data.detach().clone()
    if p.requires_grad:
        master[name] = safe_get_full_fp32_param(p).detach().clone()
    if ".mlp." in name:  # (DeepSpeed 0.19 links optimizer-state views for the first param group only)
        moment[name] = safe_get_full_optimizer_state(p, "exp_avg").detach().clone()
torch.save({"world": world, "stage": stage, "partitioned": hasattr(model.model.layers[0].mlp.up_proj.weight, "ds_id"),
            "neurons": cb.mask.neurons, "weights": weights, "master": master, "exp_avg": moment},
           out / f"rank{rank}.pt")
# Leave without the interpreter's teardown: DeepSpeed's CPU communication threads (shm comm op, gloo) are
# still joinable when the C++ statics are destroyed, which now and then aborts the process with
# "terminate called without an active exception" after all the work is done and saved (seen in CI on
# ZeRO-3). Both ranks have saved their files when the barrier returns; the test checks those files.
dist.barrier()
dist.destroy_process_group()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
