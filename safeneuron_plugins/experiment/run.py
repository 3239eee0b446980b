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
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..errors import OptionsError
from ..evaluate.attack import CONDITIONS, SWEEP
from ..evaluate.capability import load_reference_pairs
from ..evaluate.generation import generate
from ..evaluate.judges import load_judge, measured
from ..evaluate.rejudge import rejudge
from ..evaluate.report import evaluate_model, shown_conditions, write_report
from ..evaluate.store import EvaluationStore
from ..files import COUNTS, PAIRS, REPORT_RESULTS, RESULTS, json_lines, write_file
from ..mask import NeuronMask
from ..models import load_model
from ..options import SafeNeuronOptions
from ..version import __version__
from .config import (
    SAFETY_PAIR_PROMPTS,
    VARIANTS,
    ExperimentConfig,
    _check_same_experiment,
    _check_same_variant,
    attackers,
    check_gradient_accumulation,
    identification_options,
    safety_pairs,
    split_prompts,
    variant_options,
)
from .console import known_notices_filtered
from .train import train_variant

logger = logging.getLogger("safeneuron")


@known_notices_filtered()
def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run everything; writes ``results.json``, ``report.md``, plots and generations to ``out_dir``."""
    from ..identification import identify
    from ..identification.prompts import write_prompts
    from ..pairs import HARMLESS_REJECTED, make_pairs, preference_rows

    if cfg.harmless_rejected not in HARMLESS_REJECTED and not cfg.harmless_rejected.startswith("model:"):
        raise OptionsError(f"harmless_rejected {cfg.harmless_rejected!r}: use one of {', '.join(HARMLESS_REJECTED)} "
                           "or model:PATH_OR_ID (that model's answers)")
    check_gradient_accumulation(cfg)
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

    def as_options(setting: dict[str, Any]) -> SafeNeuronOptions:
        return SafeNeuronOptions(**{f"safeneuron_{k}": v for k, v in setting.items()})

    options = as_options(identify_opts)  # T0 (and the rounds during training)
    attack_sets = attackers(cfg)
    attack_options = as_options(identification_options(cfg, out, attack_sets[""]))
    extra_attackers = {name: as_options(identification_options(cfg, out, setting))
                       for name, setting in attack_sets.items() if name}
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
        mask.save(mask_path, flag="--output-dir")
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
        harmless_rejected: str | list[str] = cfg.harmless_rejected
        if harmless_rejected.startswith("model:"):
            stage(f"the rejected helpfulness replies: {harmless_rejected[6:]}'s answers")
            other, other_tok = load_model(harmless_rejected[6:], dtype=cfg.dtype, device=cfg.device)
            harmless_rejected = generate(other, other_tok, sets["train_harmless"],
                                         max_new_tokens=cfg.pairs_max_new_tokens or cfg.max_new_tokens,
                                         batch_size=cfg.gen_batch_size, desc="other model's harmless replies",
                                         progress=cfg.progress)
            del other, other_tok
        train_harmful = set(sets["train_harmful"])
        human = [p for p in safety_pairs(cfg) if p["prompt"] in train_harmful] if cfg.safety_pairs else []
        rows, counts = make_pairs(pairs_from, pairs_tok, [] if cfg.safety_pairs else sets["train_harmful"],
                                  sets["train_harmless"], judge=judge,
                                  max_new_tokens=cfg.pairs_max_new_tokens or cfg.max_new_tokens,
                                  batch_size=cfg.gen_batch_size,
                                  include_evasive=True, seed=cfg.seed, progress=cfg.progress,
                                  rejected_mask=mask if cfg.pairs_pruned else None,
                                  mlp_modules=cfg.identify.get("mlp_modules"),
                                  # pairs_model with pairs_pruned: the T0 mask of cfg.model on purpose
                                  allow_other_weights=pairs_from is not original,
                                  harmless_rejected=harmless_rejected)
        del pairs_from
        if cfg.safety_pairs:  # the harmful prompts' pairs are the human ones
            rows += preference_rows(human)
            random.Random(cfg.seed).shuffle(rows)
            counts.update(harmful_pairs=len(human), harmful_source=cfg.safety_pairs)
        write_file(pairs_path, json_lines(rows), "--output-dir", PAIRS)
        write_file(counts_path, json.dumps(counts), "--output-dir", COUNTS)
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
        if cfg.attack and "FULL" not in result["asr"]:  # evaluated without the attack (attack=False): again
            return None
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
        # every pass's replies and every attacker's mask are kept as they are made: a cut-off evaluation resumes
        store = EvaluationStore(evaluations / f"{name}.parts", model, cfg.identify.get("mlp_modules"))
        result = evaluate_model(
            model, tokenizer, harmful=sets["eval_harmful"], harmless=sets["eval_harmless"], reference_pairs=ref_pairs,
            reference=reference, options=attack_options, mask=m, judge=judge, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.gen_batch_size, sweep=SWEEP if cfg.sweep else (), control_seeds=tuple(cfg.control_seeds),
            extra_attackers=extra_attackers, conditions=CONDITIONS if cfg.attack else ("ORI",), progress=cfg.progress,
            store=store)
        if store.reused:
            stage(f"{name}: {store.reused} generation passes or masks came from an earlier, interrupted invocation")
        result.update(extra)
        result["_mask"].save(evaluations / f"{name}.safetensors", flag="--output-dir")
        for attacker, attacker_mask in result.get("_attacker_masks", {}).items():
            attacker_mask.save(evaluations / f"{name}@{attacker}.safetensors", flag="--output-dir")
        write_file(evaluations / f"{name}.json", json.dumps({k: v for k, v in result.items() if not k.startswith("_")}),
                   "--output-dir", RESULTS)
        shutil.rmtree(store.directory, ignore_errors=True)  # the evaluation file holds every reply now
        return result

    models: dict[str, dict[str, Any]] = {"original": finished("original")}
    if models["original"] is None:
        stage("attacking and checking the original model")
        # the T0 mask is the attacker's own set when the attacker identifies as the frozen set was identified
        models["original"] = evaluate("original", original, tok, None,
                                      mask if attack_sets[""] == cfg.identify else None, frozen_neurons=0)
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
    report = write_report(models, out, title="SafeNeuron vs plain safety DPO", notes=_notes(meta), flag="--output-dir")
    results = json.loads((out / "results.json").read_text())
    results["meta"] = meta
    write_file(out / "results.json", json.dumps(results, indent=2), "--output-dir", REPORT_RESULTS)
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
    """The console table: one row per model, only columns that can differ between rows (ES/SAS only when
    they prune something, FULL and its interval when the models were attacked, the random control when it
    ran)."""
    models = result["models"]
    shown = shown_conditions(models)
    attacked = "FULL" in shown
    controlled = any("controls" in m for m in models.values())
    head = [f"{'model':<18}", *(f"{c:>5}" for c in shown), *([f"{'FULL 95% CI':>13}"] if attacked else []),
            *([f"{'random':>6}"] if controlled else []),
            *([f"{'evasive':>8}"] if attacked else []), f"{'over-ref':>8}", f"{'ppl':>7}", f"{'KL':>7}", f"{'frozen':>7}"]
    lines = [" ".join(head)]
    for name, m in models.items():
        full = m["rates"].get("FULL", {})
        ci = full.get("ci95", {}).get("compliance")
        random = m.get("controls", {}).get("random")
        row = [f"{name:<18}", *(f"{'-' if m['asr'][c] is None else format(m['asr'][c], '.2f'):>5}" for c in shown),
               *([f"{f'[{ci[0]:.2f},{ci[1]:.2f}]' if ci else '':>13}"] if attacked else []),
               *([f"{random['asr']:>6.2f}" if random else f"{'':>6}"] if controlled else []),
               *([f"{full['evasive']:>8.2f}"] if attacked else []), f"{m['over_refusal']:>8.2f}",
               f"{m['perplexity']:>7.2f}", f"{m['kl']:>7.4f}", f"{m.get('frozen_neurons', 0):>7}"]
        lines.append(" ".join(row))
    return "\n".join(lines)
