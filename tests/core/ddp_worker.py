"""Run by test_ddp.py under `accelerate launch --num_processes 2`: DPO with SafeNeuron on each rank."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trl  # noqa: E402
from safeneuron_plugins.integrations.hf import SafeNeuronCallback  # noqa: E402
from test_freeze_trl import IDENT, preference_data  # noqa: E402

model_dir, out = sys.argv[1], Path(sys.argv[2])
model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
ref = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
tok = transformers.AutoTokenizer.from_pretrained(model_dir)
cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=2, max_steps=3, learning_rate=5e-3,
                     weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True, seed=0)
trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=preference_data(),
                         processing_class=tok, callbacks=[cb])
trainer.train()
rank = dist.get_rank() if dist.is_initialized() else 0
world = dist.get_world_size() if dist.is_initialized() else 1
torch.save({"world": world, "neurons": cb.mask.neurons, "state": {k: v.clone() for k, v in model.state_dict().items()}},
           out / f"rank{rank}.pt")
