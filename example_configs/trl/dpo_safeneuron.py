"""DPO with SafeNeuron freezing on SmolLM2-135M-Instruct, with trl.

    .venv/bin/python example_configs/trl/dpo_safeneuron.py --data pairs.jsonl [--model default] [--steps 20]

pairs.jsonl holds rows {"prompt": ..., "chosen": ..., "rejected": ...} (trl's preference format,
plain strings or chat message lists). The safety neurons are identified on the initial policy
with the built-in prompt set before the first optimizer step; pass --mask to use a file from
`safeneuron identify` instead.
"""

import argparse

import datasets
import torch
import transformers
import trl
from safeneuron_plugins.integrations.hf import SafeNeuronCallback

from safeneuron_plugins.models import default_model_path

parser = argparse.ArgumentParser()
parser.add_argument("--data", required=True)
parser.add_argument("--model", default="default")
parser.add_argument("--mask", default=None)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--output-dir", default="runs/trl-safeneuron-dpo")
args = parser.parse_args()

path = str(default_model_path()) if args.model == "default" else args.model
model = transformers.AutoModelForCausalLM.from_pretrained(path)
ref_model = transformers.AutoModelForCausalLM.from_pretrained(path)
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
train = datasets.load_dataset("json", data_files=args.data, split="train")

config = trl.DPOConfig(output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=4,
                       learning_rate=5e-6, beta=0.1, weight_decay=0.05, lr_scheduler_type="cosine",
                       logging_steps=1, report_to="none", save_strategy="no",
                       use_cpu=not torch.cuda.is_available(),
                       bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
# default identification: the top 1% of neurons by attribution of a refusal (docs/research/
# identification.md); safeneuron_method="safeneuron" with safeneuron_tau_es/_tau_sas gives the paper's statistics
callback = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_neuron_ratio=0.01, safeneuron_mask=args.mask)
trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=train,
                         processing_class=tokenizer, callbacks=[callback])
trainer.train()
trainer.save_model(args.output_dir)
print(f"frozen {callback.mask.num_neurons} safety neurons; mask in {args.output_dir}/safeneuron_mask.safetensors")
