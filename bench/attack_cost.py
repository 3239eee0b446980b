"""Cost of each attack family as a ratio to one plain greedy generation pass over the same prompts.

On SmolLM2-135M-Instruct (or --model), 32 held-out harmful prompts (HarmBench from ../shared/data; the
built-in set when it is absent), 32 new tokens, batch 16, everything in one run and interleaved: each
round times the plain pass, then every attack step, so numerator and denominator see the same machine
load; each ratio is the median over rounds of (step / that round's plain pass). Steps:

- pruning, per condition (ES, SAS, FULL; the empty ones are skipped): one generation pass with the
  condition's neurons pruned, without and with the identification that found them (attribution, the
  default, on the built-in harmful prompts);
- direction (refusal-direction ablation, the CLI's defaults): the means over the built-in harmful and
  harmless prompts, the choice among the candidate layers on 16 validation prompts x 16 tokens, and one
  generation pass with the direction ablated.

Goals: pruning per condition <= 1.1x, direction attack <= 1.3x.

    .venv/bin/python bench/attack_cost.py [--model default] [--prompts 32] [--max-new-tokens 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.evaluate.attack import condition_mask
from safeneuron_plugins.evaluate.attack_direction import (
    default_candidate_layers,
    direction_means,
    select_direction,
)
from safeneuron_plugins.evaluate.generation import generate
from safeneuron_plugins.evaluate.judges import load_judge
from safeneuron_plugins.evaluate.residual import ablated
from safeneuron_plugins.identification import identify
from safeneuron_plugins.identification.prompts import load_prompts
from safeneuron_plugins.models import load_model
from safeneuron_plugins.prune import pruned

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: the CLI's defaults for the direction attack (cli.DIRECTION_VALIDATION, DIRECTION_VALIDATION_TOKENS)
VALIDATION, VALIDATION_TOKENS = 16, 16


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="model directory (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--eval-harmful", default=None,
                        help="held-out harmful prompts (default: ../shared/data/harmful_harmbench.jsonl, else builtin)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--identify-prompts", type=int, default=None,
                        help="at most N identification prompts of each kind (default: all, as the CLI)")
    parser.add_argument("--judge", default="relevance", help="the judge of the direction's candidate choice")
    args = parser.parse_args(argv)

    source = args.eval_harmful or (str(SHARED / "harmful_harmbench.jsonl")
                                   if (SHARED / "harmful_harmbench.jsonl").exists() else "builtin")
    prompts = [p.text for p in load_prompts(source, kind="harmful", max_prompts=args.prompts)]
    model, tok = load_model(args.model)
    judge = load_judge(args.judge)
    layers = find_mlp_layers(model)
    # the direction's prompts, as `attack --family direction` draws them: evaluation prompts left out,
    # shuffled with seed 0, the first VALIDATION held out to choose the candidate
    pool = [p.text for p in load_prompts("builtin", kind="harmful", max_prompts=args.identify_prompts)
            if p.text not in set(prompts)]
    random.Random(0).shuffle(pool)
    validation, means_harmful = pool[:VALIDATION], pool[VALIDATION:]
    harmless = [p.text for p in load_prompts("builtin", kind="harmless", max_prompts=args.identify_prompts)]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=False)

    def pass_with(context) -> list[str]:
        with context:
            return generate(model, tok, prompts, **gen)

    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    conditions: dict[str, int] = {}
    for rnd in range(args.repeats):
        plain, replies = timed(lambda: generate(model, tok, prompts, **gen))
        step = {"plain": plain}
        step["identification"], mask = timed(lambda: identify(model, tok, max_prompts=args.identify_prompts,
                                                              progress=False))
        for name in ("ES", "SAS", "FULL"):
            prune = condition_mask(mask, name)
            if prune.num_neurons:
                conditions[name] = prune.num_neurons
                step[f"pruned {name}"], _ = timed(lambda p=prune: pass_with(pruned(model, layers, p)))
        step["direction means"], means = timed(lambda: direction_means(model, tok, means_harmful, harmless,
                                                                       progress=False))
        step["direction selection"], (direction, _) = timed(lambda m=means: select_direction(
            model, tok, m, validation, judge=judge, max_new_tokens=VALIDATION_TOKENS,
            batch_size=args.batch_size, progress=False))
        step["ablated pass"], _ = timed(lambda d=direction: pass_with(ablated(model, d)))
        step["judge"], _ = timed(lambda r=replies: judge.judge(prompts, r))
        for name in conditions:
            step[f"identification + pruned {name}"] = step["identification"] + step[f"pruned {name}"]
        step["direction attack"] = step["direction means"] + step["direction selection"] + step["ablated pass"]
        step["means + ablated pass"] = step["direction means"] + step["ablated pass"]
        for key, seconds in step.items():
            times.setdefault(key, []).append(seconds)
            ratios.setdefault(key, []).append(seconds / plain)
        print(f"round {rnd + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.1f}s" for k, v in step.items()), flush=True)

    goals = {**{f"pruned {c}": 1.1 for c in conditions}, "direction attack": 1.3}
    n_layers = len(layers)
    print(f"\n{args.model}: {len(prompts)} harmful prompts ({Path(source).name}), {args.max_new_tokens} new tokens, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds")
    n_identify = len(load_prompts("builtin", kind="harmful", max_prompts=args.identify_prompts))
    print(f"pruning: attribution identification on {n_identify} built-in harmful prompts; neurons per condition: {conditions}")
    print(f"direction: means over {len(means_harmful)} harmful + {len(harmless)} harmless prompts, "
          f"{len(default_candidate_layers(n_layers))} candidate layers x {VALIDATION} validation prompts x "
          f"{VALIDATION_TOKENS} tokens (judge {judge.name}), chose layer {direction.layer}")
    print(f"{'step':<34} {'seconds':>8} {'ratio to plain':>15} {'goal':>7}")
    for key in times:
        goal = f"<= {goals[key]}" if key in goals else ""
        print(f"{key:<34} {statistics.median(times[key]):>8.2f} {statistics.median(ratios[key]):>14.2f}x {goal:>7}")


if __name__ == "__main__":
    main()
