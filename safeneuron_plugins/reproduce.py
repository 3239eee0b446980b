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
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .attack import SWEEP
from .capability import load_reference_pairs
from .compare import evaluate_model, write_report
from .judge import load_judge
from .mask import NeuronMask
from .models import load_model
from .options import SafeNeuronOptions
from .prompts import load_prompts, prompts_hash

logger = logging.getLogger("safeneuron")

#: SafeNeuron training variants; "dpo" is the plain safety-DPO baseline.
VARIANTS: dict[str, dict[str, Any]] = {
    "dpo": {"safeneuron_freeze": False},
    "safeneuron": {"safeneuron_freeze": True},
    "safeneuron_prune": {"safeneuron_freeze": True, "safeneuron_forward_prune": True},
    "safeneuron_down": {"safeneuron_freeze": True, "safeneuron_freeze_down_proj": True},
    "safeneuron_ratio": {"safeneuron_freeze": True, "safeneuron_neuron_ratio": 0.10},
    "safeneuron_iter": {"safeneuron_freeze": True, "safeneuron_reidentify_on_epoch_end": True},
    # the paper's protocol at CPU size: T0 from the original's mask, then re-identify every
    # ExperimentConfig.reidentify_steps optimizer steps (union with the earlier set)
    "safeneuron_rounds": {"safeneuron_freeze": True},
    # stochastic forward pruning: the frozen neurons zeroed with probability 0.5 in each training pass
    "safeneuron_stochastic": {"safeneuron_freeze": True, "safeneuron_forward_prune": True,
                              "safeneuron_forward_prune_probability": 0.5},
    # training under the attack: the policy's current top neurons pruned, re-identified every
    # ExperimentConfig.adversarial_steps steps (the frozen set stays T0)
    "safeneuron_adversarial": {"safeneuron_freeze": True},
    "safeneuron_product": {"safeneuron_freeze": True, "safeneuron_signal": "product", "safeneuron_neuron_ratio": 0.05},
}


@dataclass
class ExperimentConfig:
    """Sizes and hyper-parameters of one run (defaults: the quickstart)."""

    model: str = "default"
    out_dir: str = "runs/quickstart"
    train_harmful: str = "builtin:harmful"
    train_harmless: str = "builtin:harmless"
    eval_harmful: str = "builtin:harmful"
    eval_harmless: str = "builtin:harmless"
    pairs_model: str | None = None   # the model whose replies make the pairs (default: ``model``)
    pairs_pruned: bool = False       # replies to harmful training prompts with the T0 safety neurons pruned
    #                                  (a model that refuses nearly all of them gives compliant ones so)
    train_offset: int = 0            # skip this many prompts of each training source
    n_train_harmful: int = 40
    n_train_harmless: int = 40
    n_eval_harmful: int = 24
    n_eval_harmless: int = 24
    reference_answers: str | None = None
    variants: list[str] = field(default_factory=lambda: ["dpo", "safeneuron"])
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    beta: float = 0.1
    sft_weight: float = 1.0
    weight_decay: float = 0.05
    batch_size: int = 8
    max_length: int = 160
    seed: int = 0
    max_new_tokens: int = 32
    gen_batch_size: int = 16
    judge: str = "relevance"
    sweep: bool = False
    control_seeds: list[int] = field(default_factory=list)  # random neurons at FULL(SN-)'s per-layer counts
    save_steps: int = 0          # checkpoint every N steps (0: none); an interrupted run resumes from the last
    reidentify_steps: int = 0    # safeneuron_rounds: re-identify every N optimizer steps
    adversarial_steps: int = 0   # safeneuron_adversarial: re-identify the pruned set every N optimizer steps
    lora_r: int = 0              # > 0: LoRA of this rank on every linear layer instead of full parameters
    precompute_ref: bool = False  # reference log-probs computed once before training (trl)
    device: str | None = None    # e.g. "cuda": models, training and evaluation there (default: CPU)
    dtype: str = "float32"       # of the evaluated models ("bfloat16" on a GPU); training keeps fp32 master
    #                              weights, in bf16 mixed precision on a GPU
    identify: dict[str, Any] = field(default_factory=lambda: {"max_prompts": 128})
    progress: bool = True

    def split(self) -> dict[str, list[str]]:
        """The prompt lists of every role (see :func:`split_prompts`)."""
        return split_prompts(self)[0]


#: what each prompt role is used for; the roles never share a prompt
ROLES = ("identify", "train", "eval")


def _canonical(source: str, kind: str) -> str:
    return f"builtin:{kind}" if source == "builtin" else source


def split_prompts(cfg: ExperimentConfig) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The one split of the experiment's prompts into disjoint roles, for each kind (harmful, harmless):

    - ``train_KIND``: ``n_train_KIND`` prompts of ``train_KIND`` from ``train_offset`` on (the preference pairs);
    - ``eval_KIND``: ``n_eval_KIND`` prompts of ``eval_KIND``, after the training ones when it is the same
      source (the attack, over-refusal and KL);
    - ``identify_KIND``: up to ``identify["max_prompts"]`` prompts of the identification source
      (``identify["KIND"]``, default the built-in set) that are neither training nor evaluation prompts
      (identification on the original model, during training, and the attacker's re-identification).

    A prompt text is used by one role only, even when it appears in several sources. Returns the prompt
    lists and a record of the split (per role: source, requested and actual count, the prompts' indices
    in their source and a hash of the list), which ``results.json`` keeps under ``meta.split``."""
    from .errors import PromptSourceError

    cache: dict[tuple[str, str], list[str]] = {}

    def load(src: str, kind: str) -> list[str]:
        key = (_canonical(src, kind), kind)
        if key not in cache:
            cache[key] = [p.text for p in load_prompts(src, kind=kind, option=f"{kind} prompts ({src})")]
        return cache[key]

    default_identify = SafeNeuronOptions()
    sets: dict[str, list[str]] = {}
    record: dict[str, dict[str, Any]] = {}
    for kind in ("harmful", "harmless"):
        train_src, eval_src = getattr(cfg, f"train_{kind}"), getattr(cfg, f"eval_{kind}")
        ident_src = cfg.identify.get(kind, getattr(default_identify, f"safeneuron_{kind}"))
        n_train, n_eval = getattr(cfg, f"n_train_{kind}"), getattr(cfg, f"n_eval_{kind}")
        same = _canonical(train_src, kind) == _canonical(eval_src, kind)
        plan = (("train", train_src, cfg.train_offset, n_train),
                ("eval", eval_src, cfg.train_offset + n_train if same else 0, n_eval),
                ("identify", ident_src, 0, cfg.identify.get("max_prompts")))
        used: set[str] = set()
        for role, src, start, n in plan:
            texts = load(src, kind)
            picked: list[int] = []
            for i in range(start, len(texts)):
                if n is not None and len(picked) >= n:
                    break
                if texts[i] not in used:
                    used.add(texts[i])
                    picked.append(i)
            if not picked:
                others = ", ".join(f"{r} {len(sets.get(f'{r}_{kind}', []))}" for r in ROLES if f"{r}_{kind}" in sets)
                raise PromptSourceError(
                    f"{kind} prompts: {src!r} has {len(texts)} prompts and none is left for {role} after the "
                    f"other roles took theirs ({others}); identification, training and evaluation never share a "
                    f"prompt. Lower --n-train / --n-eval, or give the {role} prompts another source"
                    + (f" (--identify-{kind})." if role == "identify" else f" (--{role}-{kind})."))
            if n is not None and len(picked) < n and role != "identify":  # identify's count is a cap
                logger.warning("%s_%s: %d prompts instead of %d (%s has no more that no other role uses)",
                               role, kind, len(picked), n, src)
            chosen = [texts[i] for i in picked]
            sets[f"{role}_{kind}"] = chosen
            record[f"{role}_{kind}"] = {"source": src, "requested": n, "n": len(chosen), "indices": picked,
                                        "hash": prompts_hash(chosen)}
    for kind in ("harmful", "harmless"):  # by construction; a cheap guard against a future edit
        for i, a in enumerate(ROLES):
            for b in ROLES[i + 1:]:
                assert not set(sets[f"{a}_{kind}"]) & set(sets[f"{b}_{kind}"]), (a, b, kind)
    return sets, record


def variant_options(cfg: ExperimentConfig, name: str, mask_path: Path,
                    identify: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``safeneuron_*`` options variant ``name`` trains with."""
    options = dict(VARIANTS[name])
    if name == "safeneuron_rounds":
        if not cfg.reidentify_steps:
            raise ValueError("variant safeneuron_rounds needs reidentify_steps > 0 (--reidentify-steps N)")
        options["safeneuron_reidentify_steps"] = cfg.reidentify_steps
    if name == "safeneuron_adversarial":
        if not cfg.adversarial_steps:
            raise ValueError("variant safeneuron_adversarial needs adversarial_steps > 0 (--adversarial-steps N)")
        options["safeneuron_adversarial_steps"] = cfg.adversarial_steps
    if options.get("safeneuron_freeze"):
        if not {"safeneuron_neuron_ratio", "safeneuron_signal"} & set(options):
            # T0: the mask identified once on the original (re-identifying variants extend it later)
            options["safeneuron_mask"] = str(mask_path)
        options.update({f"safeneuron_{k}": v for k, v in (cfg.identify if identify is None else identify).items()})
    return options


def _check_same_variant(name: str, recorded: dict[str, Any], options: dict[str, Any], where: Path) -> None:
    """A variant trained by an earlier invocation is reused only with the options it was trained with."""
    changed = _differences(recorded, {k: v for k, v in options.items() if k != "safeneuron_mask"})
    if changed:
        from .errors import OptionsError
        raise OptionsError(
            f"{where}: variant {name} was trained with other options ({changed}). Give another output "
            "directory (--name), or delete that variant's model and evaluation to train it again.")


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'' when equal; else the changed keys and the first three changes, ``old -> new``."""
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if not changed:
        return ""
    return (f"{', '.join(changed)}: "
            f"{', '.join(f'{before.get(k)!r} -> {now.get(k)!r}' for k in changed[:3])}")


def train_variant(cfg: ExperimentConfig, name: str, pairs_path: Path, mask_path: Path, out: Path,
                  identify: dict[str, Any] | None = None, callbacks: tuple = ()) -> dict:
    """One DPO run from the original model; returns training facts (also written to ``out/training.json``).
    ``identify``: the identification options of variants that identify during training (default
    ``cfg.identify``; :func:`run_experiment` passes the split's identification prompts). With
    ``cfg.save_steps`` a run that was cut off resumes from its last checkpoint in ``out``; a finished
    one (``training.json`` present) is not trained again. ``callbacks``: more Trainer callbacks."""
    import datasets
    import transformers
    import trl

    from .integrations.hf import SafeNeuronCallback
    from .models import default_model_path

    done = out / "training.json"
    if done.is_file():  # trained by an earlier, interrupted invocation of the same experiment
        facts = json.loads(done.read_text())
        _check_same_variant(name, facts["options"], variant_options(cfg, name, mask_path, identify), done)
        logger.info("%s: already trained (%s); reusing it", name, done)
        return facts
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) if out.is_dir() else []
    path = str(default_model_path()) if cfg.model == "default" else cfg.model
    transformers.set_seed(cfg.seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
    peft_config = None
    if cfg.lora_r:  # LoRA on every linear layer; the reference is the policy with its adapter off (trl)
        import peft

        peft_config = peft.LoraConfig(r=cfg.lora_r, lora_alpha=2 * cfg.lora_r, lora_dropout=0.0,
                                      target_modules="all-linear", task_type="CAUSAL_LM")
        ref = None
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    data = datasets.load_dataset("json", data_files=str(pairs_path), split="train").remove_columns("kind")
    options = variant_options(cfg, name, mask_path, identify)
    callback = SafeNeuronCallback(**options)
    on_gpu = (cfg.device or "").startswith("cuda")
    args = trl.DPOConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, beta=cfg.beta,
        loss_type=["sigmoid", "sft"] if cfg.sft_weight else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None, weight_decay=cfg.weight_decay, lr_scheduler_type="cosine",
        max_length=cfg.max_length, logging_steps=1, report_to="none", seed=cfg.seed,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500, save_total_limit=1,
        use_cpu=not on_gpu, disable_tqdm=not cfg.progress,
        # bf16 mixed precision on a GPU only: trl defaults to bf16, and on CPUs without native bf16 that
        # falls back to a slow scalar GEMM (measured 309 s vs ~20 s per step on this machine)
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        precompute_ref_log_probs=cfg.precompute_ref)
    clock = _step_clock()
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                             callbacks=[callback, clock, *callbacks], peft_config=peft_config)
    start = time.perf_counter()
    if checkpoints:
        logger.info("%s: resuming from %s", name, checkpoints[-1])
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    seconds = time.perf_counter() - start
    if peft_config is not None:  # evaluate and ship the merged model: W + B.A, exactly W on frozen rows
        trainer.model.merge_and_unload().save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    facts = {"train_seconds": round(seconds, 1), "steps": trainer.state.global_step,
             "final_loss": logs[-1]["loss"] if logs else None,
             "final_reward_margin": logs[-1].get("rewards/margins") if logs else None,
             "frozen_neurons": callback.mask.num_neurons if callback.mask is not None else 0,
             "options": {k: v for k, v in options.items() if k != "safeneuron_mask"},
             "resumed_from": checkpoints[-1].name if checkpoints else None, **clock.summary()}
    if "safeneuron_mask" in options:  # T0; frozen_neurons is the union after re-identification
        facts["frozen_neurons_t0"] = NeuronMask.load(options["safeneuron_mask"]).num_neurons
    done.write_text(json.dumps(facts, indent=2))
    for ckpt in out.glob("checkpoint-*"):  # the model is saved; optimizer states are GBs at this size
        shutil.rmtree(ckpt, ignore_errors=True)
    del trainer, model, ref
    gc.collect()
    return facts


def _step_clock():
    """A callback recording seconds per optimizer step and the process's peak resident memory."""
    import transformers

    class StepClock(transformers.TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

        def summary(self) -> dict[str, Any]:
            gaps = sorted(b - a for a, b in zip(self.stamps, self.stamps[1:]))
            return {"median_step_seconds": round(gaps[len(gaps) // 2], 1) if gaps else None,
                    "peak_rss_gb": round(_peak_rss_gb(), 2)}

    return StepClock()


def _peak_rss_gb() -> float:
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run everything; writes ``results.json``, ``report.md``, plots and generations to ``out_dir``."""
    from .identify import identify
    from .pairs import make_pairs

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets, split = split_prompts(cfg)
    # every identification (the original model, during training, the attacker's on each model) reads the
    # split's identification prompts, held apart from the training and evaluation prompts
    identify_opts = dict(cfg.identify, max_prompts=None)
    for kind in ("harmful", "harmless"):
        path = out / f"identify_{kind}.jsonl"
        path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in sets[f"identify_{kind}"]))
        identify_opts[kind] = str(path)
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
                                  mlp_modules=cfg.identify.get("mlp_modules"))
        del pairs_from
        pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts_path.write_text(json.dumps(counts))
        stage(f"{len(rows)} pairs ({counts})")

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


#: config fields that do not change what an earlier invocation computed
_RESUMABLE = {"variants", "progress", "out_dir",
              "reidentify_steps", "adversarial_steps"}  # one variant's each: checked per variant


def _check_same_experiment(cfg: ExperimentConfig, out: Path) -> None:
    """Resuming reuses the mask, pairs, trained models and evaluations in ``out``; refuse if they were
    made with other settings (nothing is deleted)."""
    path = out / "experiment.json"
    mine = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
    if path.is_file():
        # settings added to ExperimentConfig since that run was made count as their defaults
        theirs = {k: v for k, v in {**asdict(ExperimentConfig()), **json.loads(path.read_text())}.items()
                  if k not in _RESUMABLE}
        changed = _differences(theirs, mine)
        if changed:
            from .errors import OptionsError
            raise OptionsError(
                f"{out} holds an earlier run of this experiment made with other settings ({changed}); its mask, pairs, "
                "models and evaluations would not match. Give another output directory (--name), or delete it "
                "to start over.")
    else:
        path.write_text(json.dumps(mine, indent=2))


def _notes(meta: dict) -> str:
    cfg = meta["config"]
    return (f"Model {cfg['model']}; identification on {meta['sets']['identify_harmful']} harmful / "
            f"{meta['sets']['identify_harmless']} harmless prompts, disjoint from the training and evaluation ones; "
            f"{meta['sets']['train_harmful']}+{meta['sets']['train_harmless']} training "
            f"prompts -> pairs {meta['pairs']}; held-out eval {meta['sets']['eval_harmful']} harmful / "
            f"{meta['sets']['eval_harmless']} harmless prompts; DPO lr {cfg['learning_rate']}, beta {cfg['beta']}, "
            f"SFT weight on chosen {cfg['sft_weight']}, weight decay {cfg['weight_decay']}, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, seed {cfg['seed']}; greedy {cfg['max_new_tokens']} new tokens; judge "
            f"{meta['judge']}. Versions: safeneuron-plugins {meta['library_version']}, torch {meta['torch']}, "
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


__all__ = ["ExperimentConfig", "VARIANTS", "ROLES", "split_prompts", "run_experiment", "print_summary"]
