"""Which identification settings find the neurons that carry refusals? (the *open* signal / pooling options)

For one model, for every signal (gate, up, product) x pooling (max, mean, last) combination: identify the
safety neurons with the project's defaults otherwise, prune them all (FULL(SN-)) and measure how the
model's replies to held-out harmful prompts change; plus a control that prunes the same number of random
neurons per layer. A setting whose neurons, once pruned, remove more refusals has found the neurons that
matter more, for the attacker and therefore for the defender who freezes them.

    .venv/bin/python bench/ablate_identification.py MODEL_DIR --name NAME [--ratio 0.05] [--n-eval 64]

Writes docs/research/runs/<NAME>.json and prints a table. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safeneuron_plugins.evaluate.attack import judged_replies, random_like, rates
from safeneuron_plugins.evaluate.judges import load_judge
from safeneuron_plugins.identify import identify
from safeneuron_plugins.identify.prompts import load_prompts
from safeneuron_plugins.mask import NeuronMask
from safeneuron_plugins.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--eval-harmful", default=str(SHARED / "harmful_harmbench.jsonl"))
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--signals", default="gate,up,product")
    parser.add_argument("--poolings", default="max,mean,last")
    parser.add_argument("--ratio", type=float, default=None,
                        help="select the top fraction by effect size (global) instead of the thresholds, so every "
                             "setting prunes the same number of neurons")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tok = load_model(args.model)
    judge = load_judge("relevance")
    prompts = [p.text for p in load_prompts(args.eval_harmful, kind="harmful", max_prompts=args.n_eval)]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=16, system_prompt=None, progress=False)
    t0 = time.perf_counter()
    _, verdicts = judged_replies(model, tok, prompts, NeuronMask({}), judge, desc="ORI", **gen)
    rows = [{"setting": "none (ORI)", "neurons": 0, **rates(verdicts)}]
    print(f"ORI: {rows[-1]}", flush=True)
    first_mask = None
    for signal in args.signals.split(","):
        for pooling in args.poolings.split(","):
            select = {"neuron_ratio": args.ratio, "ratio_scope": "global"} if args.ratio else {}
            mask = identify(model, tok, method="safeneuron", signal=signal, pooling=pooling, max_prompts=128,
                            progress=False, **select)
            first_mask = first_mask or mask
            _, verdicts = judged_replies(model, tok, prompts, mask, judge, desc=f"{signal}/{pooling}", **gen)
            rows.append({"setting": f"{signal}/{pooling}", "neurons": mask.num_neurons,
                         "es": sum(map(len, mask.es.values())), **rates(verdicts)})
            print(f"[{time.perf_counter() - t0:5.0f}s] {rows[-1]}", flush=True)
    control = random_like(first_mask, args.seed)
    _, verdicts = judged_replies(model, tok, prompts, control, judge, desc="random", **gen)
    rows.append({"setting": f"random (same per-layer counts as {args.signals.split(',')[0]}/"
                            f"{args.poolings.split(',')[0]})", "neurons": control.num_neurons, **rates(verdicts)})
    print(f"{'setting':<44} {'neurons':>7} {'ES':>5} {'refusal':>8} {'comply':>7} {'evasive':>8}")
    for r in rows:
        print(f"{r['setting']:<44} {r['neurons']:>7} {r.get('es', ''):>5} {r['refusal']:>8.2f} "
              f"{r['compliance']:>7.2f} {r['evasive']:>8.2f}")
    out = ROOT / "docs" / "research" / "runs" / f"{args.name}.json"
    out.write_text(json.dumps({"command": "python bench/ablate_identification.py " + " ".join(
        f"{k}={v}" for k, v in vars(args).items()), "model": args.model, "n_prompts": len(prompts),
        "judge": judge.name, "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
