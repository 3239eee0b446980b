"""Specificity benchmark: do the neurons an identification setting selects carry the model's refusals?

For each setting, identify on the project's built-in prompt sets, prune the selected neurons and, as a
control, as many random neurons in each layer (several seeds), and measure the replies to held-out
HarmBench prompts (never used for identification). A setting is specific when pruning its neurons
removes refusals clearly more than pruning as many random ones.

Two measurements, because generation is the cost on a CPU:
- ``screen``: greedy replies of ``--screen-tokens`` tokens; the rate of replies that open with a
  refusal (the judge's refusal patterns). Refusals show in the first tokens, so this ranks settings
  at a fraction of the cost. Validated against ``full`` on the finalists (the JSON keeps both).
- ``full``: ``--full-tokens`` tokens, the built-in judge: ASR (compliance), refusal and evasive rates
  with Wilson 95% intervals, the targeted-minus-random difference with a paired bootstrap interval,
  and over-refusal on harmless prompts.

A setting is ``SIGNAL/POOLING[/SELECTION][@RATIO]`` (e.g. ``product/max``, ``gate/mean/sas``,
``product/last@0.02``: the thresholds unless a global neuron ratio is given) or ``attribution@RATIO``
(activation x gradient of a refusal, safeneuron_plugins.identification.attribution).

    .venv/bin/python bench/specificity.py MODEL_DIR --name qwen05 --mode screen \
        --settings gate/max,product/max,product/mean,attribution@0.01 [--n-eval 128] [--seeds 0,1,2]

Results accumulate in docs/research/runs/specificity_<NAME>.json (one entry per setting, mode and
condition; a rerun skips what is there, so an interrupted run resumes); masks are cached in
runs/specificity/<NAME>/. ``--plot`` draws ASR or refusal against neurons pruned (targeted vs random).
Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.evaluate.attack import judged_replies, random_like
from safeneuron_plugins.evaluate.generation import generate
from safeneuron_plugins.evaluate.judges import load_judge, normalize, refusal_match
from safeneuron_plugins.evaluate.significance import wilson as _wilson
from safeneuron_plugins.fingerprint import fingerprint
from safeneuron_plugins.identification.attribution import attribution_scores
from safeneuron_plugins.identification.pipeline import _texts, identify
from safeneuron_plugins.identification.prompts import load_prompts
from safeneuron_plugins.identification.scoring import top_fraction
from safeneuron_plugins.mask import NeuronMask
from safeneuron_plugins.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def wilson(k: int, n: int) -> list[float]:
    return [round(x, 4) for x in _wilson(k, n)]


def paired_diff(a: list[float], b: list[float]) -> dict:
    """Mean of a - b over the same prompts, with a paired bootstrap 95% interval."""
    import numpy as np
    from scipy.stats import bootstrap

    x, y = np.asarray(a, float), np.asarray(b, float)
    diff = float((x - y).mean())
    if np.all(x - y == (x - y)[0]):
        return {"diff": round(diff, 4), "ci95": [round(diff, 4)] * 2}
    res = bootstrap((x, y), lambda u, v, axis=-1: (u - v).mean(axis=axis), paired=True, vectorized=True,
                    n_resamples=4000, confidence_level=0.95, method="percentile", random_state=0)
    return {"diff": round(diff, 4), "ci95": [round(float(res.confidence_interval.low), 4),
                                             round(float(res.confidence_interval.high), 4)]}


def parse_setting(spec: str) -> dict:
    head, _, ratio = spec.partition("@")
    parts = head.split("/")
    if parts[0] == "attribution":
        if not ratio:
            raise SystemExit(f"setting {spec!r}: attribution needs @RATIO")
        return {"method": "attribution", "neuron_ratio": float(ratio)}
    out = {"method": "safeneuron", "signal": parts[0], "pooling": parts[1] if len(parts) > 1 else "max"}
    if len(parts) > 2:
        out["selection"] = parts[2]
    if ratio:
        out.update(neuron_ratio=float(ratio), ratio_scope="global", ratio_mode="instead")
    return out


def make_mask(model, tok, spec: str, cache: Path, n_ident: int | None) -> NeuronMask:
    path = cache / (spec.replace("/", "_").replace("@", "_at_") + ".safetensors")
    if path.exists():
        return NeuronMask.load(path)
    setting = parse_setting(spec)
    t0 = time.perf_counter()
    if setting.get("method") == "attribution":
        layers = find_mlp_layers(model)
        score_file = cache / "attribution_scores.pt"  # one backward pass serves every ratio
        if score_file.exists():
            scores = torch.load(score_file)
        else:
            prompts = load_prompts("builtin", kind="harmful", max_prompts=n_ident)
            texts, templated = _texts(tok, prompts, None)
            scores = attribution_scores(model, tok, layers, texts, templated=templated)
            cache.mkdir(parents=True, exist_ok=True)
            torch.save(scores, score_file)
        chosen = top_fraction(scores, setting["neuron_ratio"], among={l: v > 0 for l, v in scores.items()})
        mask = NeuronMask(chosen)
        mask.metadata = {"fingerprint": fingerprint(model, layers), "method": "attribution",
                         "neuron_ratio": setting["neuron_ratio"]}
    else:
        mask = identify(model, tok, max_prompts=n_ident, progress=False, **setting)
    mask.metadata["seconds"] = round(time.perf_counter() - t0, 1)
    cache.mkdir(parents=True, exist_ok=True)
    mask.save(path)
    return mask


def measure(model, tok, prompts, prune: NeuronMask, mode: str, tokens: int, judge) -> dict:
    """Per-prompt outcomes of one pruning condition (lists, so differences can be paired)."""
    if mode == "screen":
        from safeneuron_plugins.prune import pruned

        with pruned(model, find_mlp_layers(model), prune):
            replies = generate(model, tok, prompts, max_new_tokens=tokens, batch_size=16, progress=False)
        refused = [bool(refusal_match(normalize(r))) for r in replies]
        return {"refusal": refused, "replies": replies}
    replies, verdicts = judged_replies(model, tok, prompts, prune, judge, max_new_tokens=tokens, batch_size=16,
                                       system_prompt=None, desc=mode, progress=False)
    return {"refusal": [v.label == "refusal" for v in verdicts], "compliance": [v.label == "compliance" for v in verdicts],
            "evasive": [v.label == "evasive" for v in verdicts], "replies": replies}


def summarise(outcome: dict) -> dict:
    out = {"n": len(outcome["refusal"])}
    for key in ("refusal", "compliance", "evasive"):
        if key in outcome:
            k = sum(outcome[key])
            out[key] = round(k / out["n"], 4)
            out[f"{key}_ci95"] = wilson(k, out["n"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--name", required=True)
    parser.add_argument("--settings", required=True, help="comma-separated settings (see the module doc)")
    parser.add_argument("--mode", choices=["screen", "full"], default="screen")
    parser.add_argument("--eval-harmful", default=str(SHARED / "harmful_harmbench.jsonl"))
    parser.add_argument("--eval-harmless", default=str(SHARED / "harmless_prompts.jsonl"))
    parser.add_argument("--n-eval", type=int, default=128)
    parser.add_argument("--n-harmless", type=int, default=64, help="over-refusal prompts (full mode)")
    parser.add_argument("--n-ident", type=int, default=None, help="identification prompts of each built-in set")
    parser.add_argument("--screen-tokens", type=int, default=8)
    parser.add_argument("--full-tokens", type=int, default=48)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--plot", default=None, help="PNG: rate against neurons pruned, targeted vs random")
    parser.add_argument("--plot-only", action="store_true",
                        help="print the results file as a Markdown table (and draw --plot); run nothing")
    args = parser.parse_args()
    torch.manual_seed(0)
    out_path = ROOT / "docs" / "research" / "runs" / f"specificity_{args.name}.json"
    data = json.loads(out_path.read_text()) if out_path.exists() else {"model": args.model, "runs": {}}
    if args.plot_only:
        metric = "refusal" if args.mode == "screen" else "compliance"
        runs = data["runs"][args.mode]
        if args.plot:
            plot(runs, metric, Path(args.plot), runs["ORI"]["summary"][metric], f"{args.name} ({args.mode})")
        print(markdown_table(runs, args.mode))
        return
    data.setdefault("commands", [])
    command = "python bench/specificity.py " + " ".join(sys.argv[1:])
    if command not in data["commands"]:
        data["commands"].append(command)
    model, tok = load_model(args.model)
    judge = load_judge("relevance")
    harmful = [p.text for p in load_prompts(args.eval_harmful, kind="harmful", max_prompts=args.n_eval)]
    ident = {p.text.strip().lower() for kind in ("harmful", "harmless") for p in load_prompts("builtin", kind=kind)}
    overlap = [p for p in harmful if p.strip().lower() in ident]
    if overlap:
        raise SystemExit(f"{len(overlap)} evaluation prompts are also identification prompts: {overlap[:2]}")
    data["split"] = {"identification": "built-in harmful + harmless sets (169 + 169, written by the project)"
                     + (f", first {args.n_ident} of each" if args.n_ident else ""),
                     "evaluation_harmful": f"{args.eval_harmful} first {len(harmful)}",
                     "evaluation_harmless": f"{args.eval_harmless} first {args.n_harmless}",
                     "disjoint": "checked: no evaluation prompt is an identification prompt"}
    data["judge"] = judge.name
    seeds = [int(s) for s in args.seeds.split(",") if s]
    tokens = args.screen_tokens if args.mode == "screen" else args.full_tokens
    cache = ROOT / "runs" / "specificity" / args.name
    t0 = time.perf_counter()

    def save():
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(out_path)

    def run_condition(key: str, prune: NeuronMask, over_refusal: bool = True) -> dict:
        runs = data["runs"].setdefault(args.mode, {})
        if key not in runs or runs[key].get("tokens") != tokens or runs[key]["summary"]["n"] != len(harmful):
            outcome = measure(model, tok, harmful, prune, args.mode, tokens, judge)
            runs[key] = {"tokens": tokens, "pruned_neurons": prune.num_neurons, "summary": summarise(outcome),
                         "outcomes": {k: [int(x) for x in v] for k, v in outcome.items() if k != "replies"},
                         "replies": outcome["replies"]}
            if args.mode == "full" and args.n_harmless and over_refusal:
                benign = [p.text for p in load_prompts(args.eval_harmless, kind="harmless", max_prompts=args.n_harmless)]
                _, verdicts = judged_replies(model, tok, benign, prune, judge, max_new_tokens=tokens, batch_size=16,
                                             system_prompt=None, desc="over-refusal", progress=False)
                k = sum(v.label == "refusal" for v in verdicts)
                runs[key]["over_refusal"] = {"rate": round(k / len(benign), 4), "ci95": wilson(k, len(benign)),
                                             "n": len(benign)}
            save()
            print(f"[{time.perf_counter() - t0:6.0f}s] {args.mode} {key}: {runs[key]['pruned_neurons']} neurons "
                  f"{runs[key]['summary']}", flush=True)
        return runs[key]

    ori = run_condition("ORI", NeuronMask({}))
    table = []
    for spec in [s for s in args.settings.split(",") if s]:
        mask = make_mask(model, tok, spec, cache, args.n_ident)
        target = run_condition(spec, mask)
        controls = [run_condition(f"random({spec})#{seed}", random_like(mask, seed), over_refusal=False)
                    for seed in seeds]
        metric = "refusal" if args.mode == "screen" else "compliance"
        rand_mean = [sum(c["outcomes"][metric][i] for c in controls) / len(controls) for i in range(len(harmful))]
        entry = data["runs"][args.mode][spec]
        entry["setting"] = parse_setting(spec)
        entry["identify_seconds"] = mask.metadata.get("seconds")
        entry["share_of_neurons"] = round(mask.num_neurons / mask.total_neurons_in_model(), 5)
        entry["random"] = {"seeds": seeds, metric: round(sum(rand_mean) / len(rand_mean), 4),
                           "per_seed": [c["summary"][metric] for c in controls]}
        entry["targeted_minus_random"] = {metric: paired_diff(target["outcomes"][metric], rand_mean)}
        entry["targeted_minus_ori"] = {metric: paired_diff(target["outcomes"][metric], ori["outcomes"][metric])}
        save()
        table.append((spec, entry))
    metric = "refusal" if args.mode == "screen" else "compliance"
    print(f"\n{args.mode}: {metric} rate on {len(harmful)} held-out harmful prompts ({tokens} tokens); ORI "
          f"{ori['summary'][metric]:.2f} {ori['summary'][metric + '_ci95']}")
    print(f"{'setting':<28} {'neurons':>7} {'share':>6} {'targeted':>9} {'random':>7} {'t-r':>6} {'95% CI':>16}")
    for spec, e in table:
        d = e["targeted_minus_random"][metric]
        print(f"{spec:<28} {e['pruned_neurons']:>7} {e['share_of_neurons']:>6.3f} {e['summary'][metric]:>9.2f} "
              f"{e['random'][metric]:>7.2f} {d['diff']:>+6.2f} {str(d['ci95']):>16}")
    if args.plot:
        plot(data["runs"][args.mode], metric, Path(args.plot), ori["summary"][metric], args.name)
    print(f"wrote {out_path}")


def markdown_table(runs: dict, mode: str) -> str:
    """The results of one mode as a Markdown table: every setting, targeted vs random, paired difference."""
    def rate(summary, key):
        lo, hi = summary[f"{key}_ci95"]
        return f"{summary[key]:.2f} [{lo:.2f}, {hi:.2f}]"

    ori = runs["ORI"]["summary"]
    if mode == "screen":
        head = ("| pruned | neurons | share | refusal (opening) [95% CI] | random, same count per layer | "
                "targeted - random [95% CI] |\n|---|---|---|---|---|---|")
        lines = [head, f"| nothing (ORI) | 0 | 0 | {rate(ori, 'refusal')} | | |"]
        for key, e in runs.items():
            if "setting" in e:
                d = e["targeted_minus_random"]["refusal"]
                lines.append(f"| {key} | {e['pruned_neurons']:,} | {100 * e['share_of_neurons']:.1f}% | "
                             f"{rate(e['summary'], 'refusal')} | {e['random']['refusal']:.2f} | "
                             f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |")
        return "\n".join(lines)
    head = ("| pruned | neurons | ASR [95% CI] | refusal | evasive | over-refusal | random ASR (per seed) | "
            "targeted - random ASR [95% CI] |\n|---|---|---|---|---|---|---|---|")
    over = runs["ORI"].get("over_refusal", {}).get("rate")
    lines = [head, f"| nothing (ORI) | 0 | {rate(ori, 'compliance')} | {ori['refusal']:.2f} | {ori['evasive']:.2f} | "
                   f"{'' if over is None else f'{over:.2f}'} | | |"]
    for key, e in runs.items():
        if "setting" in e:
            d = e["targeted_minus_random"]["compliance"]
            over = e.get("over_refusal", {}).get("rate")
            seeds = " / ".join(f"{x:.2f}" for x in e["random"]["per_seed"])
            lines.append(f"| {key} | {e['pruned_neurons']:,} | {rate(e['summary'], 'compliance')} | "
                         f"{e['summary']['refusal']:.2f} | {e['summary']['evasive']:.2f} | "
                         f"{'' if over is None else f'{over:.2f}'} | {e['random']['compliance']:.2f} ({seeds}) | "
                         f"{d['diff']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] |")
    return "\n".join(lines)


def plot(runs: dict, metric: str, dest: Path, ori: float, name: str) -> None:
    from safeneuron_plugins.evaluate.plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.8))
    groups: dict[str, list] = {}
    for key, e in runs.items():
        if "setting" not in e:
            continue
        head, _, ratio = key.partition("@")
        family = head if head == "attribution" else f"{head} ({'ES top share' if ratio else 'thresholds'})"
        groups.setdefault(family, []).append((e["share_of_neurons"] * 100, e["summary"][metric],
                                              e["summary"][f"{metric}_ci95"], e["random"][metric]))
    for family, pts in sorted(groups.items()):
        pts.sort()
        xs = [p[0] for p in pts]
        line = ax.errorbar(xs, [p[1] for p in pts], yerr=[[p[1] - p[2][0] for p in pts], [p[2][1] - p[1] for p in pts]],
                           marker="o", capsize=3, label=family)
        ax.plot(xs, [p[3] for p in pts], linestyle="--", marker="x", color=line[0].get_color())
    ax.plot([], [], "ko-", label="targeted (95% Wilson interval)")
    ax.plot([], [], "kx--", label="random, same count per layer")
    ax.axhline(ori, color="grey", linewidth=1, label="no pruning (ORI)")
    ax.set_xlabel("neurons pruned (% of all MLP neurons)")
    ax.set_ylabel({"refusal": "refusal rate (opening)", "compliance": "ASR (compliance)"}[metric])
    ax.set_ylim(0, 1)
    ax.set_title(name)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.subplots_adjust(left=0.08, right=0.66)
    save_figure(fig, dest)


if __name__ == "__main__":
    main()
