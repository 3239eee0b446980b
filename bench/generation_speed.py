"""Throughput of the attack's generation, side by side in one run: plain batched ``generate`` on the prompts in
their order against the project's routine (``evaluate.generation.generate``: batches of similar length, left
padding, KV cache), with a static KV cache, and with bf16 weights where the CPU computes bf16 natively
(AVX512-BF16 or AMX; elsewhere bf16 falls back to a slow path and the row says so), and with int8 weights
(torch's dynamic quantisation, per output channel, of every linear layer but the LM head: int8 matrix
products on AVX2 or AVX-512 VNNI, activations quantised per batch). Every mode's replies are judged, and the
share of verdicts identical to the plain fp32 pass is printed beside its speed.

    .venv/bin/python bench/generation_speed.py MODEL [--n 128] [--max-new-tokens 64] [--batch-size 16] [--modes ...]

Prints a Markdown table (seconds, new tokens per second, ratio to plain, identical replies and verdicts) and
writes it with the replies to docs/research/runs/generation_speed_<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from safeneuron_plugins.evaluate.generation import generate
from safeneuron_plugins.evaluate.judges import load_judge
from safeneuron_plugins.files import atomic_write
from safeneuron_plugins.identification.batching import pad_id_of
from safeneuron_plugins.identification.prompts import format_prompts, load_prompts
from safeneuron_plugins.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODES = ("plain", "sorted", "sorted+static", "sorted+bf16", "sorted+int8")


def native_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


@torch.inference_mode()
def plain(model, tok, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Hugging Face ``generate`` on the prompts in their order, left-padded batches, default (dynamic) cache."""
    texts = format_prompts(tok, prompts, None)
    tok.padding_side = "left"
    replies = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id_of(tok),
                             temperature=None, top_p=None, top_k=None)
        replies += tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return [r.strip() for r in replies]


def run_mode(mode: str, model_path: str, prompts: list[str], max_new_tokens: int, batch_size: int) -> dict:
    dtype = "bfloat16" if mode.endswith("bf16") else "float32"
    model, tok = load_model(model_path, dtype=dtype)
    if mode.endswith("static"):
        model.generation_config.cache_implementation = "static"
    if mode.endswith("int8"):
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        linear = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
                  if isinstance(m, torch.nn.Linear) and m is not model.get_output_embeddings()}
        model = quantize_dynamic(model, linear, dtype=torch.qint8)
    start = time.perf_counter()
    if mode == "plain":
        replies = plain(model, tok, prompts, max_new_tokens, batch_size)
    else:
        replies = generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           desc=mode, progress=True)
    seconds = time.perf_counter() - start
    tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies)
    return {"mode": mode, "seconds": round(seconds, 1), "new_tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
            "replies": replies}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--name", default="model")
    parser.add_argument("--prompts", default=str(SHARED / "harmful_harmbench.jsonl"))
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    prompts = [p.text for p in load_prompts(args.prompts, max_prompts=args.n)]
    judge = load_judge("relevance")
    rows = []
    for mode in args.modes.split(","):
        if mode.endswith("bf16") and not native_bf16():
            rows.append({"mode": mode, "skipped": "this CPU has neither AVX512-BF16 nor AMX: bf16 runs a slow path"})
            continue
        row = run_mode(mode, args.model, prompts, args.max_new_tokens, args.batch_size)
        row["verdicts"] = [v.label for v in judge.judge(prompts, row["replies"])]
        rows.append(row)
        print(f"{mode}: {row['seconds']} s, {row['tokens_per_s']} new tokens/s", flush=True)
    base = next(r for r in rows if r["mode"] == "plain")
    lines = [f"{len(prompts)} prompts, {args.max_new_tokens} new tokens, batch {args.batch_size}, "
             f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, judge {judge.name}", "",
             "| mode | seconds | new tokens/s | speed vs plain | identical replies | identical verdicts |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['mode']} | skipped: {r['skipped']} | | | | |")
            continue
        same = sum(a == b for a, b in zip(r["replies"], base["replies"])) / len(prompts)
        verdicts = sum(a == b for a, b in zip(r["verdicts"], base["verdicts"])) / len(prompts)
        lines.append(f"| {r['mode']} | {r['seconds']} | {r['tokens_per_s']} | "
                     f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {same:.2f} | {verdicts:.2f} |")
    table = "\n".join(lines)
    print(table)
    out = ROOT / "docs" / "research" / "runs" / f"generation_speed_{args.name}.json"
    atomic_write(out, json.dumps({"command": " ".join(["python", "bench/generation_speed.py", args.model]),
                                  "table": table, "rows": rows}, indent=1).encode())
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
