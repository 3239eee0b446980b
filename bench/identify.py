"""Identification benchmark on SmolLM2-135M-Instruct, everything measured side by side in one run.

1. identification wall time / a plain full forward pass (with LM head) over the same prompts,
   batches and dtype (target <= 0.85);
2. NeuroStrike scorer time / ours (the paper reports 15-20x);
3. peak memory (max RSS of a fresh process) identifying on 256 vs 2048 prompts (target: within 5%).

    .venv/bin/python bench/identify.py [--prompts 512] [--batch-size 32] [--skip-memory | --memory-only]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from safeneuron_plugins import identify
from safeneuron_plugins.identification.batching import input_device, length_batches, pad_batch, pad_id_of, tokenize
from safeneuron_plugins.identification.prompts import format_prompts, load_prompts
from safeneuron_plugins.models import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def prompt_pool(n: int) -> tuple[list[str], list[str]]:
    """n/2 harmful and n/2 harmless prompts (shared data when present, else the built-in set, cycled)."""
    if (SHARED / "harmful_advbench.jsonl").exists():
        harmful = [p.text for p in load_prompts(str(SHARED / "harmful_donotanswer.jsonl"))]
        harmless = [p.text for p in load_prompts(str(SHARED / "harmless_prompts.jsonl"))]
    else:
        harmful = [p.text for p in load_prompts("builtin", kind="harmful")]
        harmless = [p.text for p in load_prompts("builtin", kind="harmless")]
    half = n // 2
    cycle = lambda xs: [xs[i % len(xs)] + ("" if i < len(xs) else f" ({i // len(xs)})") for i in range(half)]
    return cycle(harmful), cycle(harmless)


def full_forward_seconds(model, tok, texts: list[str], batch_size: int, max_length: int) -> float:
    seqs = tokenize(tok, texts, max_length, templated=True)
    start = time.perf_counter()
    with torch.inference_mode():
        for group in length_batches([len(s) for s in seqs], batch_size):
            ids, mask = pad_batch([seqs[i] for i in group], pad_id_of(tok), input_device(model))
            model(input_ids=ids, attention_mask=mask, use_cache=False)
    return time.perf_counter() - start


def memory_child(n: int, max_length: int, batch_size: int) -> None:
    """Peak RSS sampled during identification only (model loading peaks higher and would hide it)."""
    import gc
    import threading

    import psutil

    model, tok = load_model("default")
    # the same 256 prompts repeated, so both runs see the same lengths and batch shapes: only the
    # number of prompts differs
    base_u, base_s = prompt_pool(256)
    harmful = [f"{p} ({i // 128})" for i, p in enumerate(base_u * (n // 256))]
    harmless = [f"{p} ({i // 128})" for i, p in enumerate(base_s * (n // 256))]
    gc.collect()
    proc = psutil.Process()
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    thread = threading.Thread(target=sample)
    thread.start()
    identify(model, tok, harmful, harmless, batch_size=batch_size, max_length=max_length, progress=False)
    done.set()
    thread.join()
    print(json.dumps({"n": n, "peak_mib": peak[0] / 2**20, "baseline_mib": baseline / 2**20,
                      "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--skip-neurostrike", action="store_true")
    parser.add_argument("--prompts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--probe-epochs", type=int, default=5000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, 64, args.batch_size)
        return

    if args.memory_only:
        return memory(args)
    torch.manual_seed(0)
    model, tok = load_model(args.model)
    harmful, harmless = prompt_pool(args.prompts)
    texts = format_prompts(tok, harmful) + format_prompts(tok, harmless)
    name = "SmolLM2-135M-Instruct" if args.model == "default" else args.model
    print(f"{name}, fp32, {torch.get_num_threads()} threads, {len(texts)} prompts, batch {args.batch_size}")
    full_forward_seconds(model, tok, texts[:args.batch_size], args.batch_size, args.max_length)  # warm-up
    t_full = full_forward_seconds(model, tok, texts, args.batch_size, args.max_length)
    start = time.perf_counter()
    mask = identify(model, tok, harmful, harmless, batch_size=args.batch_size, max_length=args.max_length,
                    method="safeneuron", progress=False)
    t_ours = time.perf_counter() - start
    start = time.perf_counter()
    attr = identify(model, tok, harmful, harmless, batch_size=args.batch_size, max_length=args.max_length,
                    method="attribution", progress=False)
    t_attr = time.perf_counter() - start
    t_full2 = full_forward_seconds(model, tok, texts, args.batch_size, args.max_length)
    full = (t_full + t_full2) / 2  # before and after ours, so drift in machine load cancels
    print(f"plain full forward (LM head included): {full:.1f}s (runs: {t_full:.1f}s, {t_full2:.1f}s)")
    print(f"SafeNeuron statistics identification: {t_ours:.1f}s, {mask.num_neurons} neurons")
    print(f"RATIO statistics identification / full forward = {t_ours / full:.2f} (target <= 0.85)")
    print(f"attribution identification (forward + backward over the harmful half): {t_attr:.1f}s, "
          f"{attr.num_neurons} neurons")
    print(f"RATIO attribution identification / full forward = {t_attr / full:.2f}")
    if args.skip_neurostrike:
        return

    start = time.perf_counter()
    ns = identify(model, tok, harmful, harmless, batch_size=args.batch_size, max_length=args.max_length,
                  method="neurostrike", probe_epochs=args.probe_epochs, progress=False)
    t_ns = time.perf_counter() - start
    print(f"NeuroStrike scorer ({args.probe_epochs} probe epochs): {t_ns:.1f}s, {ns.num_neurons} neurons")
    print(f"RATIO NeuroStrike / SafeNeuron = {t_ns / t_ours:.1f}x (paper: 15-20x)")

    if not args.skip_memory:
        memory(args)


def memory(args) -> None:
    """Peak memory identifying on 256 vs 2048 prompts, each in a fresh process."""
    rss = {}
    for n in (256, 2048):
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--batch-size",
                              str(args.batch_size)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rss[n] = r["peak_mib"]
        print(f"peak RSS during identification on {n} prompts (max length 64): {rss[n]:.0f} MiB "
              f"(after loading: {r['baseline_mib']:.0f} MiB; process high-water mark incl. loading: "
              f"{r['maxrss_kb'] / 1024:.0f} MiB)")
    print(f"RATIO peak memory 2048 / 256 prompts = {rss[2048] / rss[256]:.3f} (target within 1.05)")


if __name__ == "__main__":
    main()
