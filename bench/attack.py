"""Generation throughput of `attack` (batched, left padding, KV cache) vs a plain one-prompt-at-a-time
`generate` loop over the same prompts, on SmolLM2-135M-Instruct, measured side by side in one run.

    .venv/bin/python bench/attack.py [--prompts 32] [--max-new-tokens 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from safeneuron_plugins.evaluate.attack import judged_replies
from safeneuron_plugins.evaluate.judges import default_judge
from safeneuron_plugins.identification.prompts import format_prompts, load_prompts
from safeneuron_plugins.mask import NeuronMask
from safeneuron_plugins.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, tok = load_model("default")
    prompts = [p.text for p in load_prompts("builtin", kind="harmful", max_prompts=args.prompts)]

    start = time.perf_counter()
    texts = format_prompts(tok, prompts)
    with torch.inference_mode():
        for text in texts:
            ids = tok(text, add_special_tokens=False, return_tensors="pt")
            model.generate(**ids, max_new_tokens=args.max_new_tokens, do_sample=False,
                           pad_token_id=tok.pad_token_id)
    plain = time.perf_counter() - start

    start = time.perf_counter()
    judged_replies(model, tok, prompts, NeuronMask({}), default_judge(), max_new_tokens=args.max_new_tokens,
                   batch_size=args.batch_size, system_prompt=None, desc="attack", progress=False)
    ours = time.perf_counter() - start
    print(f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, {torch.get_num_threads()} threads")
    print(f"plain generate loop: {len(prompts) / plain:.2f} prompts/s")
    print(f"attack (batch {args.batch_size}, judged): {len(prompts) / ours:.2f} prompts/s")
    print(f"RATIO attack / plain loop throughput = {plain / ours:.2f}x")


if __name__ == "__main__":
    main()
