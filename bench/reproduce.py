"""The reproduction experiment on SmolLM2-135M-Instruct (CPU), with the project's own code path.

Plain safety DPO vs SafeNeuron DPO (and variants) from the same start, same data, hyper-parameters
and seed; every model attacked with neurons re-identified on it. Uses the shared datasets when
present (AdvBench/Do-Not-Answer prompts for training pairs, HarmBench held out for evaluation).
Writes docs/results/<name>.json (the issue's shape) and docs/results/<name>/report.md with plots.

    .venv/bin/python bench/reproduce.py --name smollm2 [--variants dpo,safeneuron,safeneuron_prune]
        [--n-train 128] [--n-eval 100] [--epochs 2] [--learning-rate 2e-5] [--sft-weight 1.0]

Runtime on the 2-core CPU machine is dominated by DPO steps (batch 8) and greedy generation.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from safeneuron_plugins.reproduce import ExperimentConfig, print_summary, run_experiment

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="smollm2")
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default="dpo,safeneuron,safeneuron_prune,safeneuron_down")
    parser.add_argument("--pairs-model", default=None,
                        help="make the pairs from this model's replies (e.g. the original model, when --model is an "
                             "already aligned start that would refuse every harmful prompt)")
    parser.add_argument("--train-offset", type=int, default=0, help="skip this many prompts of each training source")
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=100)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--sft-weight", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sweep", action="store_true", help="also attack with 25/50/75/100%% of the safety neurons")
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--merge-into", metavar="NAME",
                        help="also add this run's trained models to docs/results/NAME.json (a run with the same "
                             "data, hyper-parameters and seed; its original model's figures must match)")
    args = parser.parse_args()
    shared = (SHARED / "harmful_harmbench.jsonl").exists()
    cfg = ExperimentConfig(
        model=args.model, out_dir=str(ROOT / "runs" / "reproduce" / args.name),
        train_harmful=str(SHARED / "harmful_advbench.jsonl") if shared else "builtin:harmful",
        train_harmless=str(SHARED / "harmless_prompts.jsonl") if shared else "builtin:harmless",
        eval_harmful=str(SHARED / "harmful_harmbench.jsonl") if shared else "builtin:harmful",
        eval_harmless=str(SHARED / "harmless_prompts.jsonl") if shared else "builtin:harmless",
        pairs_model=args.pairs_model, train_offset=args.train_offset,
        n_train_harmful=args.n_train, n_train_harmless=args.n_train, n_eval_harmful=args.n_eval,
        n_eval_harmless=args.n_eval, variants=args.variants.split(","), epochs=args.epochs,
        learning_rate=args.learning_rate, sft_weight=args.sft_weight, max_new_tokens=args.max_new_tokens,
        seed=args.seed, batch_size=args.batch_size, sweep=args.sweep)
    result = run_experiment(cfg)
    print(print_summary(result))
    out = Path(cfg.out_dir)
    dest = ROOT / "docs" / "results"
    (dest / args.name).mkdir(parents=True, exist_ok=True)
    data = json.loads((out / "results.json").read_text())
    data["command"] = _command(args)
    (dest / f"{args.name}.json").write_text(json.dumps(data, indent=2))
    if args.merge_into:
        _merge(dest / f"{args.merge_into}.json", data)
    for f in ("report.md", "asr.png", "layers.png"):
        if (out / f).exists():
            shutil.copy(out / f, dest / args.name / f)
    if not args.keep_models:
        shutil.rmtree(out / "models", ignore_errors=True)
    print(f"wrote {dest / (args.name + '.json')} and {dest / args.name}/report.md")


def _command(args: argparse.Namespace) -> str:
    parts = ["python bench/reproduce.py"]
    for k, v in vars(args).items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            parts += [flag] if v else []
        elif v is not None:
            parts += [flag, str(v)]
    return " ".join(parts)


def _merge(target: Path, data: dict) -> None:
    """Add the trained models of ``data`` to an earlier run's results (same start, data and seed)."""
    base = json.loads(target.read_text())
    a, b = base["models"]["original"]["asr"], data["models"]["original"]["asr"]
    if a != b:
        raise SystemExit(f"{target}: the original model's ASR differs ({a} vs {b}); not the same set-up")
    for name, model in data["models"].items():
        if name != "original":
            base["models"][name] = model
    base.setdefault("merged_commands", []).append(data["command"])
    target.write_text(json.dumps(base, indent=2))
    print(f"merged {[n for n in data['models'] if n != 'original']} into {target}")


if __name__ == "__main__":
    main()
