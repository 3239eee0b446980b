"""The reproduction experiment (CPU), with the project's own code path: SmolLM2-135M-Instruct, and the
vendor-aligned Qwen2.5-Coder models through ``--recipe qwen05`` / ``--recipe qwen15``.

Plain safety DPO vs SafeNeuron DPO (and variants) from the same start, same data, hyper-parameters
and seed; every model attacked with neurons re-identified on it. Uses the shared datasets when
present (AdvBench/Do-Not-Answer prompts for training pairs, HarmBench held out for evaluation).
Writes docs/research/runs/<name>.json and docs/research/runs/<name>/report.md with plots (``--results-dir``).

    .venv/bin/python bench/reproduce.py --name smollm2 [--variants dpo,safeneuron,safeneuron_prune]
        [--n-train 128] [--n-eval 100] [--epochs 2] [--learning-rate 2e-5] [--sft-weight 1.0]
    .venv/bin/python bench/reproduce.py --recipe qwen05     # Qwen2.5-Coder-0.5B-Instruct, full parameters

A recipe is a set of defaults for the flags below (flags given on the command line win). Every stage
is kept in runs/reproduce/NAME (``--work-dir``: mask, pairs, checkpoints, one evaluation file per model), so
the same command after an interruption resumes where it stopped; changed settings are refused.

Identification settings (``--identify`` for the frozen set and the rounds, ``--attack-identify`` for the
attacker, ``--extra-attacker NAME:...`` for more attackers, FULL(SN-) only) are comma-separated
``KEY=VALUE`` pairs of the identification options without their ``safeneuron_`` prefix (docs/OPTIONS.md),
e.g. ``method=safeneuron,tau_es=3,tau_sas=2,signal=product,pooling=max``; they are checked by the options
schema before anything is loaded.

The ``paper15`` recipe is the pre-registered experiment of docs/research/paper15/protocol.md (the paper's
rule for freezing, rounds and attack, human preference pairs, full-parameter DPO with 8-bit AdamW moments);
``paper15-pilot`` its learning-rate pilot at 0.5B. Their work directories live outside the repository
(``$SAFENEURON_CACHE/experiments/NAME``, default ``~/.cache/safeneuron``): training spans invocations in
chunks of ``--max-train-minutes`` (exit code 3 at a chunk's end: run the same command again), and each
trained model carries a manifest (settings, pairs and weight hashes) that a later invocation checks.

Runtime on the 2-core CPU machine is dominated by DPO steps (batch 8) and greedy generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from safeneuron_plugins.experiment import ExperimentConfig, print_summary, run_experiment
from safeneuron_plugins.files import atomic_write
from safeneuron_plugins.pairs import SAFETY_CHOSEN

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CACHE = Path(os.environ.get("SAFENEURON_CACHE", Path.home() / ".cache" / "safeneuron")) / "experiments"

#: the paper's identification rule for Qwen (docs/research/paper15/protocol.md): ES ∪ SAS, tau_ES 3, tau_SAS 2,
#: the paper's activation up x act(gate) (signal product), max pooling
PAPER_RULE = "method=safeneuron,tau_es=3,tau_sas=2,selection=union,signal=product,pooling=max"
_PAPER15 = {
    "safety_pairs": str(SHARED / "hh_rlhf_harmless_test.jsonl"), "n_train_harmful": 48, "n_train_harmless": 112,
    "identify_harmful": str(SHARED / "harmful_advbench.jsonl"), "identify_harmless": str(SHARED / "harmless_prompts.jsonl"),
    "identify": PAPER_RULE, "epochs": 3.0, "learning_rate": 5e-6, "sft_weight": 0.0, "beta": 0.1, "weight_decay": 0.05,
    "batch_size": 8, "max_length": 256, "pairs_max_new_tokens": 96, "precompute_ref": True, "save_steps": 5,
    "max_train_minutes": 45.0, "n_eval_harmless": 100,
    # helpfulness pairs as in human data, neither reply a refusal: the policy's answer over its answer to another
    # prompt; rejecting a refusal taught the pilot's first run to stop refusing (protocol.md, deviations)
    "harmless_rejected": "other_answer",
}


#: per-model defaults (the paper's protocol sized for a 2-core CPU; see docs/research/methods.md)
RECIPES: dict[str, dict] = {
    "qwen05": {
        "name": "qwen05", "model": str(Path.home() / ".cache" / "qwen-0.5b" / "hf"),
        "variants": "dpo,safeneuron_rounds",
        # 30/70 safety/helpfulness as in the paper: about half of the AdvBench prompts get a compliant reply
        # (a safety pair), nearly every harmless prompt a helpful one
        "n_train_harmful": 96, "n_train_harmless": 112, "n_eval": 128, "n_eval_harmless": 128,
        "epochs": 2.0, "learning_rate": 1e-5, "sft_weight": 1.0, "max_new_tokens": 32, "batch_size": 8,
        "save_steps": 10, "reidentify_steps": 20, "adversarial_steps": 8, "control_seeds": "0",
    },
    "qwen15": {
        "name": "qwen15", "model": str(Path.home() / ".cache" / "qwen-1.5b" / "hf"),
        # T0 frozen only: re-identification cannot freeze exactly under LoRA (a later-found neuron's lora_B rows are
        # already trained and move with lora_A), and is refused there
        "variants": "dpo,safeneuron",
        # full-parameter fp32 AdamW needs ~28 GB: LoRA r16 on every linear layer, exact freezing of the
        # safety neurons' adapter rows; reference log-probs once before training (the adapter-off policy)
        "lora_r": 16, "precompute_ref": True,
        # it refuses 191 of 200 AdvBench prompts: the rejected (compliant) replies come from the model with its
        # T0 safety neurons pruned (it complies with 0.99 of held-out prompts so); 48/84 ~ the paper's 30/70
        "pairs_pruned": True, "n_train_harmful": 48, "n_train_harmless": 84, "n_eval": 128, "n_eval_harmless": 128,
        "epochs": 2.0, "learning_rate": 1e-4, "sft_weight": 1.0, "max_new_tokens": 32, "batch_size": 8,
        "save_steps": 5, "reidentify_steps": 15, "control_seeds": "0",
    },
    # the paper's row at 1.5B, pre-registered (docs/research/paper15/protocol.md): T0..T3 by the paper's rule, its
    # attacker on every model, the gate-signal and attribution attackers beside it, all 200 HarmBench prompts
    "paper15": {
        **_PAPER15, "name": "paper15", "model": str(Path.home() / ".cache" / "qwen-1.5b" / "hf"),
        "variants": "dpo,safeneuron_rounds", "reidentify_steps": 15, "optim": "adamw_bnb_8bit",
        "n_eval": 200, "max_new_tokens": 64, "control_seeds": "0",
        "extra_attacker": [f"paper_gate:{PAPER_RULE.replace('signal=product', 'signal=gate')}",
                           "attribution:method=attribution,neuron_ratio=0.01"],
        "cache": True, "keep_models": True, "results_dir": str(ROOT / "docs" / "research" / "paper15"),
    },
    # its learning-rate pilot: plain DPO at 0.5B, ORI on 100 Do-Not-Answer dev prompts (never HarmBench)
    "paper15-pilot": {
        **_PAPER15, "name": "paper15_pilot", "model": str(Path.home() / ".cache" / "qwen-0.5b" / "hf"),
        "variants": "dpo", "eval_harmful": str(SHARED / "harmful_donotanswer.jsonl"), "n_eval": 100,
        "max_new_tokens": 64, "attack": False,
        "cache": True, "keep_models": True,
        "results_dir": str(ROOT / "docs" / "research" / "paper15" / "pilot"),
    },
    # one GPU (>= 40 GB): the paper's hyper-parameters, full parameters, bf16 mixed precision, more data and
    # the paper's four rounds (T0..T3); the CPU recipes' prompt split and judge
    "qwen15-gpu": {
        "name": "qwen15_gpu", "model": str(Path.home() / ".cache" / "qwen-1.5b" / "hf"),
        "variants": "dpo,safeneuron_rounds,safeneuron_adversarial", "device": "cuda", "dtype": "bfloat16",
        "n_train_harmful": 320, "n_train_harmless": 300, "n_eval": 128, "n_eval_harmless": 128,
        "epochs": 3.0, "learning_rate": 5e-6, "sft_weight": 1.0, "max_new_tokens": 64, "batch_size": 8,
        "save_steps": 50, "reidentify_steps": 40, "adversarial_steps": 20, "control_seeds": "0,1,2",
    },
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="defaults for one model (flags still override)")
    parser.add_argument("--table", metavar="NAME", help="print the Markdown tables of RESULTS_DIR/NAME.json and exit")
    parser.add_argument("--name", default="smollm2")
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default="dpo,safeneuron,safeneuron_prune,safeneuron_down")
    parser.add_argument("--pairs-model", default=None,
                        help="make the pairs from this model's replies (e.g. the original model, when --model is an "
                             "already aligned start that would refuse every harmful prompt)")
    parser.add_argument("--pairs-pruned", action="store_true",
                        help="the rejected replies to harmful training prompts come from the model with its T0 safety "
                             "neurons pruned (for a model that refuses nearly all of them)")
    parser.add_argument("--harmless-rejected", default="refusal", metavar="refusal|other_answer|model:PATH",
                        help="what each helpfulness pair rejects: a refusal template, the model's own answer to "
                             "another harmless prompt, or another model's answer")
    parser.add_argument("--train-offset", type=int, default=0, help="skip this many prompts of each training source")
    parser.add_argument("--n-train", type=int, default=128, help="training prompts of each kind")
    parser.add_argument("--n-train-harmful", type=int, help="harmful training prompts (default --n-train)")
    parser.add_argument("--n-train-harmless", type=int, help="harmless training prompts (default --n-train)")
    parser.add_argument("--n-eval", type=int, default=100, help="held-out harmful prompts (HarmBench)")
    parser.add_argument("--n-eval-harmless", type=int, help="held-out harmless prompts (default --n-eval)")
    parser.add_argument("--save-steps", type=int, default=0, help="checkpoint every N steps (resume after a cut)")
    parser.add_argument("--reidentify-steps", type=int, default=0,
                        help="variant safeneuron_rounds: re-identify every N steps (union with the earlier set)")
    parser.add_argument("--adversarial-steps", type=int, default=0,
                        help="variant safeneuron_adversarial: re-identify the pruned set every N steps")
    parser.add_argument("--device", help="e.g. cuda (default: CPU)")
    parser.add_argument("--dtype", default="float32", help="of the evaluated models; bfloat16 on a GPU")
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank on every linear layer (0: full parameters)")
    parser.add_argument("--precompute-ref", action="store_true", help="reference log-probs once before training")
    parser.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false",
                        help="no recomputed forward in the backward pass (trl turns it on): the same weights, less "
                             "time per step, more activation memory (bench/step_time.py measures it)")
    parser.add_argument("--control-seeds", default="", help="random-neuron controls at FULL(SN-)'s count, e.g. 0,1")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--sft-weight", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8, help="preference pairs per optimizer step")
    parser.add_argument("--gradient-accumulation", type=int, default=1,
                        help="split each batch into this many micro-batches (less memory, the same mean gradient)")
    parser.add_argument("--sweep", action="store_true", help="also attack with 25/50/75/100%% of the safety neurons")
    parser.add_argument("--identify", default="", metavar="KEY=VALUE,...",
                        help="identification of the frozen set and the rounds (default: the scorer's defaults)")
    parser.add_argument("--attack-identify", default=None, metavar="KEY=VALUE,...",
                        help="the attacker's identification on every model (default: as --identify)")
    parser.add_argument("--extra-attacker", action="append", default=None, metavar="NAME:KEY=VALUE,...",
                        help="another attacker, FULL(SN-) only (repeatable)")
    parser.add_argument("--identify-harmful", help="identification prompts, harmful (default: the built-in set)")
    parser.add_argument("--identify-harmless", help="identification prompts, harmless (default: the built-in set)")
    parser.add_argument("--eval-harmful", help="held-out harmful prompts (default: HarmBench)")
    parser.add_argument("--safety-pairs", help="human preference pairs for the harmful training prompts (JSON lines: "
                                               "prompt/chosen/rejected or HH-RLHF dialogues)")
    parser.add_argument("--safety-pairs-chosen", default="refusal_or_evasive", choices=tuple(SAFETY_CHOSEN),
                        help="which of them are kept: chosen reply a refusal or a non-answer (default), or a refusal "
                             "only (most of HH-RLHF's non-answers are a question back)")
    parser.add_argument("--pairs-max-new-tokens", type=int, help="of the replies that make pairs (default "
                                                                 "--max-new-tokens)")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--max-length", type=int, default=160, help="of a training sequence, in tokens")
    parser.add_argument("--optim", default="adamw_torch", help="transformers' optimizer name, e.g. adamw_bnb_8bit")
    parser.add_argument("--freeze-embeddings", action="store_true",
                        help="keep the input embedding (and a tied LM head) out of training")
    parser.add_argument("--max-train-minutes", type=float, default=0.0,
                        help="train at most this long per invocation, then checkpoint and exit 3 (rerun to resume)")
    parser.add_argument("--no-attack", dest="attack", action="store_false",
                        help="evaluate each model's own replies (ORI), over-refusal, perplexity and KL only")
    parser.add_argument("--work-dir", help="where the run's stages are kept (default runs/reproduce/NAME, or the "
                                           "cache's with --cache)")
    parser.add_argument("--cache", action="store_true",
                        help="keep the run's stages in $SAFENEURON_CACHE/experiments/NAME, outside the repository")
    parser.add_argument("--results-dir", default=str(ROOT / "docs" / "research" / "runs"),
                        help="where NAME.json and NAME/ (report, masks, replies) are written")
    parser.add_argument("--keep-models", action="store_true")
    parser.add_argument("--merge-into", metavar="NAME",
                        help="also add this run's trained models to RESULTS_DIR/NAME.json (a run with the same "
                             "data, hyper-parameters and seed; its original model's figures must match)")
    return parser


def main() -> None:
    parser = _parser()
    known, _ = parser.parse_known_args()
    if known.table:
        results = Path(known.results_dir)
        print(tables(json.loads((results / f"{known.table}.json").read_text())))
        masks = results / known.table / "masks"
        if masks.is_dir():
            print("\n" + overlaps(masks))
        return
    if known.recipe:
        parser.set_defaults(**RECIPES[known.recipe])
    args = parser.parse_args()
    shared = (SHARED / "harmful_harmbench.jsonl").exists()
    identify = {"max_prompts": 128, **_setting(args.identify, "--identify")}
    for kind in ("harmful", "harmless"):
        if getattr(args, f"identify_{kind}"):
            identify[kind] = getattr(args, f"identify_{kind}")
    sources = {k: v for k, v in identify.items() if k in ("harmful", "harmless", "max_prompts")}
    extra = dict(_attacker(spec) for spec in args.extra_attacker or [])
    cfg = ExperimentConfig(
        model=args.model,
        out_dir=args.work_dir or str((CACHE if args.cache else ROOT / "runs" / "reproduce") / args.name),
        train_harmful=str(SHARED / "harmful_advbench.jsonl") if shared else "builtin:harmful",
        train_harmless=str(SHARED / "harmless_prompts.jsonl") if shared else "builtin:harmless",
        eval_harmful=args.eval_harmful or (str(SHARED / "harmful_harmbench.jsonl") if shared else "builtin:harmful"),
        eval_harmless=str(SHARED / "harmless_prompts.jsonl") if shared else "builtin:harmless",
        pairs_model=args.pairs_model, pairs_pruned=args.pairs_pruned, train_offset=args.train_offset,
        harmless_rejected=args.harmless_rejected,
        n_train_harmful=args.n_train_harmful or args.n_train, n_train_harmless=args.n_train_harmless or args.n_train,
        n_eval_harmful=args.n_eval, n_eval_harmless=args.n_eval_harmless or args.n_eval,
        variants=args.variants.split(","), epochs=args.epochs,
        learning_rate=args.learning_rate, sft_weight=args.sft_weight, max_new_tokens=args.max_new_tokens,
        seed=args.seed, batch_size=args.batch_size, gradient_accumulation=args.gradient_accumulation, sweep=args.sweep,
        save_steps=args.save_steps,
        reidentify_steps=args.reidentify_steps, adversarial_steps=args.adversarial_steps, lora_r=args.lora_r,
        precompute_ref=args.precompute_ref, gradient_checkpointing=args.gradient_checkpointing, device=args.device,
        dtype=args.dtype, identify=identify,
        attack_identify=None if args.attack_identify is None else {**sources, **_setting(args.attack_identify,
                                                                                       "--attack-identify")},
        extra_attackers={name: {**sources, **setting} for name, setting in extra.items()},
        safety_pairs=args.safety_pairs, safety_pairs_chosen=args.safety_pairs_chosen,
        pairs_max_new_tokens=args.pairs_max_new_tokens, beta=args.beta,
        weight_decay=args.weight_decay, max_length=args.max_length, optim=args.optim,
        freeze_embeddings=args.freeze_embeddings, max_train_minutes=args.max_train_minutes, attack=args.attack,
        control_seeds=[int(x) for x in args.control_seeds.split(",") if x])
    from safeneuron_plugins.experiment.config import attackers
    from safeneuron_plugins.experiment.train import TrainingChunkEnded

    attackers(cfg)  # every setting checked before a model is loaded
    try:
        result = run_experiment(cfg)
    except TrainingChunkEnded as e:
        print(e)
        sys.exit(3)
    print(print_summary(result))
    out = Path(cfg.out_dir)
    dest = Path(args.results_dir)
    (dest / args.name).mkdir(parents=True, exist_ok=True)
    data = json.loads((out / "results.json").read_text())
    data["command"] = _command(parser, args)
    meta = data["meta"]
    trained = [m["training"] for m in data["models"].values() if "training" in m]
    data.update(
        base_model=args.model, n_prompts={"harmful": meta["sets"]["eval_harmful"], "harmless": meta["sets"]["eval_harmless"]},
        training={"mode": f"LoRA r{args.lora_r} on every linear layer, merged" if args.lora_r else "full parameters",
                  "steps": sorted({t["steps"] for t in trained}), "pairs": meta["pairs"],
                  "seconds": {n: m["training"]["train_seconds"] for n, m in data["models"].items() if "training" in m},
                  "median_step_seconds": {n: m["training"].get("median_step_seconds")
                                          for n, m in data["models"].items() if "training" in m},
                  "chunks": {n: m["training"].get("chunks") for n, m in data["models"].items() if "training" in m},
                  "longest_chunk_seconds": {n: m["training"].get("longest_chunk_seconds")
                                            for n, m in data["models"].items() if "training" in m},
                  "peak_rss_gb": {n: m["training"].get("peak_rss_gb") for n, m in data["models"].items()
                                  if "training" in m}})
    atomic_write(dest / f"{args.name}.json", json.dumps(data, indent=2).encode())
    if args.merge_into:
        _merge(dest / f"{args.merge_into}.json", data)
    for f in ("report.md", "asr.png", "layers.png", "generations.jsonl"):
        if (out / f).exists():
            shutil.copy(out / f, dest / args.name / f)
    _keep_masks(out, dest / args.name / "masks")
    if not args.keep_models:
        shutil.rmtree(out / "models", ignore_errors=True)
    print(f"wrote {dest / (args.name + '.json')} and {dest / args.name}/report.md")


def _setting(text: str, flag: str) -> dict:
    """``KEY=VALUE,...`` as identification options (values as JSON where they parse, else strings), checked by the
    options schema."""
    from safeneuron_plugins.errors import OptionsError
    from safeneuron_plugins.options import SafeNeuronOptions

    setting = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag}: {part!r} is not KEY=VALUE (e.g. {flag} method=safeneuron,tau_es=3)")
        try:
            setting[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            setting[key.strip()] = value
    try:
        SafeNeuronOptions.from_dict({f"safeneuron_{k}": v for k, v in setting.items()}, source=flag)
    except OptionsError as e:
        raise SystemExit(f"{flag}: {e}") from None
    return setting


def _attacker(spec: str) -> tuple[str, dict]:
    name, sep, setting = spec.partition(":")
    if not sep or not name or "=" in name:
        raise SystemExit(f"--extra-attacker {spec!r}: give NAME:KEY=VALUE,... (e.g. attribution:method=attribution)")
    return name, _setting(setting, f"--extra-attacker {name}")


def _keep_masks(out: Path, masks: Path) -> None:
    """The masks behind the figures (a few KB each): T0, each model's frozen set, each attacker's set."""
    masks.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "original_mask.safetensors", masks / "t0.safetensors")
    for f in (out / "evaluations").glob("*.safetensors"):
        shutil.copy(f, masks / f"attacker_{f.stem}.safetensors")
    for f in (out / "models").glob("*/safeneuron_mask.safetensors"):
        shutil.copy(f, masks / f"frozen_{f.parent.name}.safetensors")


def overlaps(masks: Path) -> str:
    """Where the attacker's neurons on each model lie: in T0, in that model's frozen set, elsewhere."""
    from safeneuron_plugins import NeuronMask

    def cells(path):
        return NeuronMask.load(path).cells()

    t0 = cells(masks / "t0.safetensors")
    lines = ["| model | attacker's neurons | of them in T0 | in the model's frozen set | in any run's frozen set |",
             "|---|---|---|---|---|"]
    frozen = {f.stem.removeprefix("frozen_"): cells(f) for f in sorted(masks.glob("frozen_*.safetensors"))}
    anywhere = set().union(t0, *frozen.values())
    for f in sorted(masks.glob("attacker_*.safetensors")):
        name = f.stem.removeprefix("attacker_")
        a = cells(f)
        own = frozen.get(name, set())
        lines.append(f"| {name} | {len(a)} | {len(a & t0)} | {len(a & own) if own else '-'} | {len(a & anywhere)} |")
    return "\n".join(lines)


def tables(data: dict) -> str:
    """The write-up's tables: every model's rates with 95% intervals, then the paired comparisons."""
    def ci(rate, interval):
        return f"{rate:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval else f"{rate:.2f}"

    head = ["model", "frozen (T0 -> end)", "ORI", "FULL(SN-)", "random, FULL's count", "evasive (FULL)",
            "over-refusal", "perplexity", "KL", "training"]
    rows = []
    for name, m in data["models"].items():
        rates, t = m["rates"], m.get("training", {})
        full = rates.get("FULL", {"compliance": float("nan"), "evasive": float("nan")})
        random = m.get("controls", {}).get("random")
        frozen = (f"{t['frozen_neurons_t0']} -> {t['frozen_neurons']}" if t.get("frozen_neurons_t0") is not None
                  and t["frozen_neurons_t0"] != t["frozen_neurons"] else str(m.get("frozen_neurons", 0)))
        rows.append([name, frozen, ci(rates["ORI"]["compliance"], rates["ORI"].get("ci95", {}).get("compliance")),
                     ci(full["compliance"], full.get("ci95", {}).get("compliance")),
                     ci(random["asr"], random.get("ci95")) if random else "",
                     f"{full['evasive']:.2f}", ci(m["over_refusal"], m.get("over_refusal_ci95")),
                     f"{m['perplexity']:.2f}", f"{m['kl']:.3f}",
                     f"{t['steps']} steps, {t['train_seconds'] / 60:.0f} min, {t.get('median_step_seconds')} s/step, "
                     f"peak {t.get('peak_rss_gb')} GB" if t else ""])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "| comparison | ASR a | ASR b | a - b [95% CI] | McNemar p | n |", "|---|---|---|---|---|---|"]
    for r in data.get("paired", []):
        what = (f"{r['a']}: FULL(SN-) vs ORI" if r["a"] == r["b"] else f"{r['a']} vs {r['b']}, {r['a_condition']}")
        out.append(f"| {what} | {r['a_asr']:.2f} | {r['b_asr']:.2f} | {r['diff']:+.2f} [{r['ci95'][0]:+.2f}, "
                   f"{r['ci95'][1]:+.2f}] | {r['p_value']:.3g} | {r['n']} |")
    return "\n".join(out)


def _command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The invocation that reproduces ``args``, every value spelt out (a recipe's defaults included), so the
    command still means the same after a recipe changes. A flag (store_true / store_false) is written when
    its value is the one the flag sets."""
    parts = ["python", "bench/reproduce.py"]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest)
        if isinstance(action, argparse._StoreConstAction):  # store_true, store_false
            parts += [action.option_strings[0]] if value == action.const else []
        elif isinstance(value, list):  # a repeatable flag
            for item in value:
                parts += [action.option_strings[0], str(item)]
        elif value is not None:
            parts += [action.option_strings[0], str(value)]
    return shlex.join(parts)  # quoted: an empty value (--control-seeds '') stays one argument


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
    atomic_write(target, json.dumps(base, indent=2).encode())
    print(f"merged {[n for n in data['models'] if n != 'original']} into {target}")


if __name__ == "__main__":
    main()
