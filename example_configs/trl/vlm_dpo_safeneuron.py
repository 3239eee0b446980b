"""DPO of a vision-language model (e.g. Qwen2.5-VL) on image+text preference pairs with SafeNeuron freezing, with trl.

    .venv/bin/python example_configs/trl/vlm_dpo_safeneuron.py --model Qwen/Qwen2.5-VL-7B-Instruct \\
        --data example_configs/llamafactory/vlm_preferences.jsonl [--steps 20]

The data file holds rows {"images": ["a.png"], "instruction" or "prompt": ..., "chosen": ..., "rejected": ...}
(image paths relative to the file; an "<image>" marker in the prompt is dropped: trl puts the image before
the text). trl's VLM path is used: the processor is the processing_class and its collator turns the images
into pixel values. The safety neurons of the language model's MLPs are identified on the initial policy
(text prompts, through the processor's tokenizer) and frozen exactly; the vision tower and projector are
never in the mask. Verified on tiny random Qwen2-VL / Qwen2.5-VL / LLaVA models on CPU only
(tests/core/test_freeze_vlm.py, tests/core/test_examples.py); a 7B model needs a GPU.
"""

import argparse
from pathlib import Path

import datasets
import torch
import transformers
import trl
from safeneuron_plugins.integrations.hf import SafeNeuronCallback

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="a VLM directory or Hugging Face id")
parser.add_argument("--data", required=True)
parser.add_argument("--mask", default=None)
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--output-dir", default="runs/trl-safeneuron-vlm-dpo")
parser.add_argument("--trust-remote-code", action="store_true", help="for processors or models shipped as code")
args = parser.parse_args()

model = transformers.AutoModelForImageTextToText.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)
ref_model = transformers.AutoModelForImageTextToText.from_pretrained(args.model,
                                                                     trust_remote_code=args.trust_remote_code)
processor = transformers.AutoProcessor.from_pretrained(args.model, trust_remote_code=args.trust_remote_code)

base = Path(args.data).resolve().parent
train = datasets.load_dataset("json", data_files=args.data, split="train")
if "instruction" in train.column_names:  # LLaMA-Factory's column name
    train = train.rename_column("instruction", "prompt")
# conversational rows: trl's collator puts an image part before the user's text (one per image)
train = train.map(lambda row: {
    "prompt": [{"role": "user", "content": row["prompt"].replace("<image>", "").strip()}],
    "chosen": [{"role": "assistant", "content": row["chosen"]}],
    "rejected": [{"role": "assistant", "content": row["rejected"]}],
    "images": [str(base / p) for p in row["images"]]})
train = train.cast_column("images", datasets.List(datasets.Image()))

config = trl.DPOConfig(output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=1,
                       gradient_accumulation_steps=4, learning_rate=5e-7, beta=0.1, weight_decay=0.05,
                       lr_scheduler_type="cosine", logging_steps=1, report_to="none", save_strategy="no",
                       max_length=None,  # truncation could cut image tokens (trl refuses keep_end for VLMs)
                       use_cpu=not torch.cuda.is_available(),
                       bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
callback = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_neuron_ratio=0.01, safeneuron_mask=args.mask)
trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=config, train_dataset=train,
                         processing_class=processor, callbacks=[callback])
trainer.train()
trainer.save_model(args.output_dir)
print(f"frozen {callback.mask.num_neurons} safety neurons of the language model; "
      f"mask in {args.output_dir}/safeneuron_mask.safetensors")
