"""How strong must the pruning attack be to break each model? ASR as a function of the share of neurons pruned.

The default attack prunes the neurons that pass the thresholds (FULL(SN-)). When that barely moves the
trained models, a stronger attacker prunes more: here the top r of all MLP neurons by effect size (harmful
vs harmless prompts), re-identified on each model under test, for several r; plus a control that prunes
as many random neurons per layer at the largest r. Models: NAME=PATH pairs (PATH a directory or `default`).

    .venv/bin/python bench/attack_strength.py original=default dpo=runs/.../dpo safeneuron=runs/.../safeneuron \
        --name smollm2_attack_strength [--ratios 0.02,0.05,0.1,0.2] [--n-eval 64]

Writes docs/research/runs/<NAME>.json and a plot docs/research/runs/<NAME>.png; prints a table. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from safeneuron_plugins.evaluate.attack import judged_replies, random_like, rates
from safeneuron_plugins.evaluate.judges import load_judge
from safeneuron_plugins.evaluate.plots import pyplot, save_figure
from safeneuron_plugins.identify import identify
from safeneuron_plugins.identify.prompts import load_prompts
from safeneuron_plugins.mask import NeuronMask
from safeneuron_plugins.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="NAME=PATH")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ratios", default="0.02,0.05,0.1,0.2")
    parser.add_argument("--eval-harmful", default=str(SHARED / "harmful_harmbench.jsonl"))
    parser.add_argument("--n-eval", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--signal", default="gate", help="the attacker's identification signal (safeneuron_signal)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    judge = load_judge("relevance")
    prompts = [p.text for p in load_prompts(args.eval_harmful, kind="harmful", max_prompts=args.n_eval)]
    gen = dict(max_new_tokens=args.max_new_tokens, batch_size=16, system_prompt=None, progress=False)
    t0 = time.perf_counter()
    results: dict[str, dict] = {}
    for spec in args.models:
        name, path = spec.split("=", 1)
        model, tok = load_model(path)
        rows = {}
        _, verdicts = judged_replies(model, tok, prompts, NeuronMask({}), judge, desc="ORI", **gen)
        rows["0"] = {"neurons": 0, **rates(verdicts)}
        mask = None
        for r in ratios:
            mask = identify(model, tok, method="safeneuron", neuron_ratio=r, ratio_scope="global", ratio_mode="instead",
                            signal=args.signal,
                            max_prompts=128, progress=False)
            _, verdicts = judged_replies(model, tok, prompts, mask, judge, desc=f"top {r}", **gen)
            rows[str(r)] = {"neurons": mask.num_neurons, **rates(verdicts)}
            print(f"[{time.perf_counter() - t0:5.0f}s] {name} top {r:.0%}: {rows[str(r)]}", flush=True)
        control = random_like(mask, args.seed)
        _, verdicts = judged_replies(model, tok, prompts, control, judge, desc="random", **gen)
        rows[f"random {ratios[-1]}"] = {"neurons": control.num_neurons, **rates(verdicts)}
        results[name] = {"path": path, "by_ratio": rows}
        del model
    print(f"\nASR (compliance) / refusal rate on {len(prompts)} held-out harmful prompts, judge {judge.name}")
    keys = ["0"] + [str(r) for r in ratios] + [f"random {ratios[-1]}"]
    print(f"{'model':<18}" + "".join(f"{k:>16}" for k in keys))
    for name, res in results.items():
        print(f"{name:<18}" + "".join(f"{res['by_ratio'][k]['compliance']:>8.2f}/{res['by_ratio'][k]['refusal']:<7.2f}"
                                      for k in keys))
    dest = ROOT / "docs" / "research" / "runs"
    (dest / f"{args.name}.json").write_text(json.dumps({
        "command": "python bench/attack_strength.py " + " ".join(args.models) + f" --name {args.name} --ratios "
                   f"{args.ratios} --signal {args.signal} --n-eval {args.n_eval} --max-new-tokens {args.max_new_tokens} "
                   f"--seed {args.seed}",
        "judge": judge.name, "n_prompts": len(prompts), "models": results,
        "seconds": round(time.perf_counter() - t0, 1)}, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        xs = [0.0] + ratios
        ax.plot([100 * x for x in xs], [res["by_ratio"][str(x) if x else "0"]["compliance"] for x in xs], marker="o",
                label=name)
    ax.set_xlabel("neurons pruned (% of all MLP neurons, top by effect size on the model under test)")
    ax.set_ylabel("ASR (harmful compliance)")
    ax.set_ylim(0, 1)
    ax.legend()
    save_figure(fig, dest / f"{args.name}.png")
    print(f"wrote {dest / (args.name + '.json')} and {dest / (args.name + '.png')}")


if __name__ == "__main__":
    main()
