"""The end-to-end experiment: original model -> safety pairs -> plain DPO and SafeNeuron DPO from the
same start (same data, hyper-parameters and seed) -> pruning attack and capability checks on every
model -> one results file and report. ``safeneuron quickstart`` and ``bench/reproduce.py`` both run
this code path, with different sizes.
"""

from __future__ import annotations

import gc
import json
import logging
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..evaluate.attack import SWEEP
from ..evaluate.capability import load_reference_pairs
from ..evaluate.judges import load_judge, measured
from ..evaluate.rejudge import rejudge
from ..evaluate.report import evaluate_model, write_report
from ..mask import NeuronMask
from ..models import load_model
from ..options import SafeNeuronOptions
from .config import (
    SAFETY_PAIR_PROMPTS,
    VARIANTS,
    ExperimentConfig,
    _check_same_experiment,
    _check_same_variant,
    identification_options,
    split_prompts,
    variant_options,
)
from .train import train_variant

logger = logging.getLogger("safeneuron")


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run everything; writes ``results.json``, ``report.md``, plots and generations to ``out_dir``."""
    from ..identify import identify
    from ..identify.prompts import write_prompts
    from ..pairs import make_pairs

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets, split = split_prompts(cfg)
    # every identification (the original model, during training, the attacker's on each model) reads the
    # split's identification prompts, held apart from the training and evaluation prompts
    for kind in ("harmful", "harmless"):
        write_prompts(out / f"identify_{kind}.jsonl", sets[f"identify_{kind}"])
    identify_opts = identification_options(cfg, out)
    judge = load_judge(cfg.judge)
    ref_pairs = load_reference_pairs(cfg.reference_answers, cfg.n_eval_harmless)
    options = SafeNeuronOptions(**{f"safeneuron_{k}": v for k, v in identify_opts.items()})
    stage = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731

    _check_same_experiment(cfg, out)
    stage(f"loading {cfg.model}")
    original, tok = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    mask_path = out / "original_mask.safetensors"
    if mask_path.is_file():
        mask = NeuronMask.load(mask_path)
        stage(f"original model's safety neurons: {mask.num_neurons}, from {mask_path} (an earlier invocation)")
    else:
        stage("identifying the safety neurons of the original model (the mask SafeNeuron DPO freezes)")
        mask = identify(original, tok, options=options, progress=cfg.progress)
        mask.save(mask_path)
    pairs_path, counts_path = out / "pairs.jsonl", out / "pairs_counts.json"
    if counts_path.is_file():
        counts = json.loads(counts_path.read_text())
        stage(f"pairs from {pairs_path} (an earlier invocation): {counts}")
    else:
        if cfg.pairs_model:
            stage(f"{mask.num_neurons} safety neurons; building safety preference pairs from {cfg.pairs_model}'s replies")
            pairs_from, pairs_tok = load_model(cfg.pairs_model, dtype=cfg.dtype, device=cfg.device)
        else:
            stage(f"{mask.num_neurons} safety neurons; building safety preference pairs from the model's own replies")
            pairs_from, pairs_tok = original, tok
        rows, counts = make_pairs(pairs_from, pairs_tok, sets["train_harmful"], sets["train_harmless"], judge=judge,
                                  max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size,
                                  include_evasive=True, seed=cfg.seed, progress=cfg.progress,
                                  rejected_mask=mask if cfg.pairs_pruned else None,
                                  mlp_modules=cfg.identify.get("mlp_modules"),
                                  # pairs_model with pairs_pruned: the T0 mask of cfg.model on purpose
                                  allow_other_weights=pairs_from is not original)
        del pairs_from
        pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts_path.write_text(json.dumps(counts))
        stage(f"{len(rows)} pairs ({counts})")

    if not (out / SAFETY_PAIR_PROMPTS).is_file():  # what variants pruning only the safety pairs prune
        rows = [json.loads(line) for line in pairs_path.read_text().splitlines() if line.strip()]
        texts = [r["prompt"] if isinstance(r["prompt"], str) else r["prompt"][-1]["content"]
                 for r in rows if r.get("kind") == "harmful"]
        write_prompts(out / SAFETY_PAIR_PROMPTS, texts)

    evaluations = out / "evaluations"  # one file per finished model: an interrupted run resumes after it

    def finished(name: str) -> dict[str, Any] | None:
        path = evaluations / f"{name}.json"
        if not path.is_file():
            return None
        stage(f"{name}: trained and evaluated by an earlier invocation ({path})")
        result = json.loads(path.read_text())
        if name in VARIANTS:
            _check_same_variant(name, result["training"]["options"],
                                variant_options(cfg, name, mask_path, identify_opts), path)
        if result.get("judge") != judge.name:  # made before a judge change: the same replies, judged again
            stage(f"{name}: its replies were judged by {result.get('judge')}; judging them again by {judge.name} "
                  "(the file stays as it is)")
            result = rejudge(result, judge)
        result["_mask"] = NeuronMask.load(path.with_suffix(".safetensors"))
        return result

    def evaluate(name: str, model, tokenizer, reference, m=None, **extra) -> dict[str, Any]:
        result = evaluate_model(
            model, tokenizer, harmful=sets["eval_harmful"], harmless=sets["eval_harmless"], reference_pairs=ref_pairs,
            reference=reference, options=options, mask=m, judge=judge, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.gen_batch_size, sweep=SWEEP if cfg.sweep else (), control_seeds=tuple(cfg.control_seeds),
            progress=cfg.progress)
        result.update(extra)
        evaluations.mkdir(exist_ok=True)
        result["_mask"].save(evaluations / f"{name}.safetensors")
        (evaluations / f"{name}.json").write_text(json.dumps({k: v for k, v in result.items() if k != "_mask"}))
        return result

    models: dict[str, dict[str, Any]] = {"original": finished("original")}
    if models["original"] is None:
        stage("attacking and checking the original model")
        models["original"] = evaluate("original", original, tok, None, mask, frozen_neurons=0)
    for name in cfg.variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        if (done := finished(name)) is not None:
            models[name] = done
            continue
        stage(f"training {name} ({VARIANTS[name]})")
        original = None  # training needs the memory (1.5B parameters are 7 GB in fp32); reloaded for the KL
        gc.collect()
        facts = train_variant(cfg, name, pairs_path, mask_path, out / "models" / name, identify_opts)
        original, _ = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
        stage(f"{name}: {facts['steps']} steps in {facts['train_seconds']}s; attacking it "
              "(safety neurons re-identified on it, as an attacker would)")
        model, mtok = load_model(str(out / "models" / name), dtype=cfg.dtype, device=cfg.device)
        models[name] = evaluate(name, model, mtok, original, frozen_neurons=facts["frozen_neurons"], training=facts)
        del model
        gc.collect()
    meta = {"config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 1), "library_version": __version__,
            "torch": torch.__version__, "python": platform.python_version(), "judge": judge.name,
            "pairs": counts, "sets": {k: len(v) for k, v in sets.items()}, "split": split}
    import transformers
    import trl
    meta.update(transformers=transformers.__version__, trl=trl.__version__)
    report = write_report(models, out, title="SafeNeuron vs plain safety DPO", notes=_notes(meta))
    results = json.loads((out / "results.json").read_text())
    results["meta"] = meta
    (out / "results.json").write_text(json.dumps(results, indent=2))
    stage(f"done: report {report}")
    return {"models": models, "meta": meta, "report": str(report)}


def _notes(meta: dict) -> str:
    cfg = meta["config"]
    return (f"Model {cfg['model']}; identification on {meta['sets']['identify_harmful']} harmful / "
            f"{meta['sets']['identify_harmless']} harmless prompts, disjoint from the training and evaluation ones; "
            f"{meta['sets']['train_harmful']}+{meta['sets']['train_harmless']} training "
            f"prompts -> pairs {meta['pairs']}; held-out eval {meta['sets']['eval_harmful']} harmful / "
            f"{meta['sets']['eval_harmless']} harmless prompts; DPO lr {cfg['learning_rate']}, beta {cfg['beta']}, "
            f"SFT weight on chosen {cfg['sft_weight']}, weight decay {cfg['weight_decay']}, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, seed {cfg['seed']}; greedy {cfg['max_new_tokens']} new tokens; judge "
            f"{meta['judge']} ({measured(meta['judge'])}). Versions: safeneuron-plugins {meta['library_version']}, "
            f"torch {meta['torch']}, "
            f"transformers {meta.get('transformers')}, trl {meta.get('trl')}. Total {meta['seconds']} s.")


def print_summary(result: dict[str, Any]) -> str:
    lines = [f"{'model':<18} {'ORI':>5} {'ES':>5} {'SAS':>5} {'FULL':>5} {'FULL 95% CI':>13} {'evasive':>8} "
             f"{'over-ref':>8} {'ppl':>7} {'KL':>7} {'frozen':>7}"]
    for name, m in result["models"].items():
        a = m["asr"]
        ci = m["rates"]["FULL"].get("ci95", {}).get("compliance")
        lines.append(f"{name:<18} {a['ORI']:>5.2f} {a['ES']:>5.2f} {a['SAS']:>5.2f} {a['FULL']:>5.2f} "
                     f"{f'[{ci[0]:.2f},{ci[1]:.2f}]' if ci else '':>13} "
                     f"{m['rates']['FULL']['evasive']:>8.2f} {m['over_refusal']:>8.2f} {m['perplexity']:>7.2f} "
                     f"{m['kl']:>7.4f} {m.get('frozen_neurons', 0):>7}")
    return "\n".join(lines)
