"""DPO step time and peak memory with the SafeNeuron callback vs without, on SmolLM2-135M-Instruct (CPU).

Each configuration runs in a fresh process (so max RSS is its own), alternating plain and
SafeNeuron runs; the step time is the median over steps after the first. The mask is computed once
beforehand, so identification time is not counted as step time.

    .venv/bin/python bench/freeze_step.py [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(mode: str, mask: str, steps: int) -> None:
    import datasets
    import transformers
    import trl
    from safeneuron_plugins.integrations.hf import SafeNeuronCallback

    from safeneuron_plugins.models import default_model_path

    path = str(default_model_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    rows = [{"prompt": [{"role": "user", "content": f"Give me a tip about cooking rice, number {i}."}],
             "chosen": [{"role": "assistant", "content": "Rinse the rice, then use 1.5 cups of water per cup."}],
             "rejected": [{"role": "assistant", "content": "I can't help with that."}]} for i in range(64)]
    times: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t)

    callbacks = [Timer()]
    if mode == "safeneuron":
        callbacks.insert(0, SafeNeuronCallback(safeneuron_freeze=True, safeneuron_mask=mask))
    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=4,
                         learning_rate=5e-6, weight_decay=0.05, report_to="none", save_strategy="no",
                         logging_steps=1000, use_cpu=True, bf16=False, seed=0)
    trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows),
                   processing_class=tok, callbacks=callbacks).train()
    print(json.dumps({"mode": mode, "median_step_s": statistics.median(times[1:]),
                      "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.steps)
        return
    from safeneuron_plugins import identify
    from safeneuron_plugins.models import load_model

    model, tok = load_model("default")
    mask_path = Path(tempfile.mkdtemp()) / "mask.safetensors"
    mask = identify(model, tok, progress=False)
    mask.save(mask_path)
    del model
    print(f"mask: {mask.num_neurons} safety neurons (built-in prompts, tau_es 3, tau_sas 2)")
    results: dict[str, list[dict]] = {"plain": [], "safeneuron": []}
    for _ in range(args.repeats):
        for mode in ("plain", "safeneuron"):
            out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", mode,
                                  str(mask_path)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode].append(r)
            print(f"{mode:>10}: median step {r['median_step_s']:.2f}s, peak RSS {r['maxrss_mib']:.0f} MiB")
    step = {m: statistics.median(r["median_step_s"] for r in rs) for m, rs in results.items()}
    rss = {m: statistics.median(r["maxrss_mib"] for r in rs) for m, rs in results.items()}
    print(f"RATIO step time SafeNeuron / plain = {step['safeneuron'] / step['plain']:.3f} (target <= 1.03)")
    print(f"RATIO peak memory SafeNeuron / plain = {rss['safeneuron'] / rss['plain']:.3f}")


if __name__ == "__main__":
    main()
