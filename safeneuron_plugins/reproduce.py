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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .attack import SWEEP
from .capability import load_reference_pairs
from .compare import evaluate_model, write_report
from .judge import load_judge
from .models import load_model
from .options import SafeNeuronOptions
from .prompts import load_prompts

logger = logging.getLogger("safeneuron")

#: SafeNeuron training variants; "dpo" is the plain safety-DPO baseline.
VARIANTS: dict[str, dict[str, Any]] = {
    "dpo": {"safeneuron_freeze": False},
    "safeneuron": {"safeneuron_freeze": True},
    "safeneuron_prune": {"safeneuron_freeze": True, "safeneuron_forward_prune": True},
    "safeneuron_down": {"safeneuron_freeze": True, "safeneuron_freeze_down_proj": True},
    "safeneuron_ratio": {"safeneuron_freeze": True, "safeneuron_neuron_ratio": 0.10},
    "safeneuron_iter": {"safeneuron_freeze": True, "safeneuron_reidentify_on_epoch_end": True},
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
    judge: str = "patterns"
    sweep: bool = False
    identify: dict[str, Any] = field(default_factory=lambda: {"max_prompts": 128})
    progress: bool = True

    def split(self) -> dict[str, list[str]]:
        """Train and eval prompt lists; when train and eval come from one source they are disjoint."""
        def take(src, kind, start, n):
            texts = [p.text for p in load_prompts(src, kind=kind, option=f"{kind} prompts")]
            return texts[start:start + n]
        same_u = self.train_harmful == self.eval_harmful
        same_s = self.train_harmless == self.eval_harmless
        o = self.train_offset
        return {
            "train_harmful": take(self.train_harmful, "harmful", o, self.n_train_harmful),
            "train_harmless": take(self.train_harmless, "harmless", o, self.n_train_harmless),
            "eval_harmful": take(self.eval_harmful, "harmful", o + self.n_train_harmful if same_u else 0,
                                 self.n_eval_harmful),
            "eval_harmless": take(self.eval_harmless, "harmless", o + self.n_train_harmless if same_s else 0,
                                  self.n_eval_harmless),
        }


def train_variant(cfg: ExperimentConfig, name: str, pairs_path: Path, mask_path: Path, out: Path) -> dict:
    """One DPO run from the original model; returns training facts."""
    import datasets
    import transformers
    import trl

    from .integrations.hf import SafeNeuronCallback
    from .models import default_model_path

    path = str(default_model_path()) if cfg.model == "default" else cfg.model
    transformers.set_seed(cfg.seed)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    data = datasets.load_dataset("json", data_files=str(pairs_path), split="train").remove_columns("kind")
    options = dict(VARIANTS[name])
    if options.get("safeneuron_freeze"):
        if not {"safeneuron_neuron_ratio", "safeneuron_signal", "safeneuron_reidentify_on_epoch_end"} & set(options):
            options["safeneuron_mask"] = str(mask_path)  # the mask identified once on the original
        options.update({f"safeneuron_{k}": v for k, v in cfg.identify.items()})
    callback = SafeNeuronCallback(**options)
    args = trl.DPOConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size, learning_rate=cfg.learning_rate, beta=cfg.beta,
        loss_type=["sigmoid", "sft"] if cfg.sft_weight else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None, weight_decay=cfg.weight_decay, lr_scheduler_type="cosine",
        max_length=cfg.max_length, logging_steps=1, save_strategy="no", report_to="none", seed=cfg.seed,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=not cfg.progress,
        # trl defaults to bf16; on CPUs without native bf16 that falls back to a slow scalar GEMM (measured
        # 309 s vs ~20 s per step on this machine)
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                             callbacks=[callback])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    facts = {"train_seconds": round(seconds, 1), "steps": trainer.state.global_step,
             "final_loss": logs[-1]["loss"] if logs else None,
             "final_reward_margin": logs[-1].get("rewards/margins") if logs else None,
             "frozen_neurons": callback.mask.num_neurons if callback.mask is not None else 0,
             "options": {k: v for k, v in options.items() if k != "safeneuron_mask"}}
    del trainer, model, ref
    gc.collect()
    return facts


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run everything; writes ``results.json``, ``report.md``, plots and generations to ``out_dir``."""
    from .identify import identify
    from .pairs import make_pairs

    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = cfg.split()
    judge = load_judge(cfg.judge)
    ref_pairs = load_reference_pairs(cfg.reference_answers, cfg.n_eval_harmless)
    options = SafeNeuronOptions(**{f"safeneuron_{k}": v for k, v in cfg.identify.items()})
    stage = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)  # noqa: E731

    stage(f"loading {cfg.model}")
    original, tok = load_model(cfg.model)
    stage("identifying the safety neurons of the original model (the mask SafeNeuron DPO freezes)")
    mask = identify(original, tok, options=options, progress=cfg.progress)
    mask_path = mask.save(out / "original_mask.safetensors")
    if cfg.pairs_model:
        stage(f"{mask.num_neurons} safety neurons; building safety preference pairs from {cfg.pairs_model}'s replies")
        pairs_from, pairs_tok = load_model(cfg.pairs_model)
    else:
        stage(f"{mask.num_neurons} safety neurons; building safety preference pairs from the model's own replies")
        pairs_from, pairs_tok = original, tok
    rows, counts = make_pairs(pairs_from, pairs_tok, sets["train_harmful"], sets["train_harmless"], judge=judge,
                              max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size,
                              include_evasive=True, seed=cfg.seed, progress=cfg.progress)
    del pairs_from
    pairs_path = out / "pairs.jsonl"
    pairs_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stage(f"{len(rows)} pairs ({counts})")

    evaluate = lambda model, tokenizer, reference, m=None: evaluate_model(  # noqa: E731
        model, tokenizer, harmful=sets["eval_harmful"], harmless=sets["eval_harmless"], reference_pairs=ref_pairs,
        reference=reference, options=options, mask=m, judge=judge, max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.gen_batch_size, sweep=SWEEP if cfg.sweep else (), progress=cfg.progress)
    stage("attacking and checking the original model")
    models: dict[str, dict[str, Any]] = {"original": evaluate(original, tok, None, mask)}
    models["original"]["frozen_neurons"] = 0
    training: dict[str, dict] = {}
    for name in cfg.variants:
        if name not in VARIANTS:
            raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        stage(f"training {name} ({VARIANTS[name]})")
        training[name] = train_variant(cfg, name, pairs_path, mask_path, out / "models" / name)
        stage(f"{name}: {training[name]['steps']} steps in {training[name]['train_seconds']}s; attacking it "
              "(safety neurons re-identified on it, as an attacker would)")
        model, mtok = load_model(str(out / "models" / name))
        models[name] = evaluate(model, mtok, original)
        models[name]["frozen_neurons"] = training[name]["frozen_neurons"]
        models[name]["training"] = training[name]
        del model
        gc.collect()
    meta = {"config": asdict(cfg), "seconds": round(time.perf_counter() - t0, 1), "library_version": __version__,
            "torch": torch.__version__, "python": platform.python_version(), "judge": judge.name,
            "pairs": counts, "sets": {k: len(v) for k, v in sets.items()}}
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
    return (f"Model {cfg['model']}; {meta['sets']['train_harmful']}+{meta['sets']['train_harmless']} training "
            f"prompts -> pairs {meta['pairs']}; held-out eval {meta['sets']['eval_harmful']} harmful / "
            f"{meta['sets']['eval_harmless']} harmless prompts; DPO lr {cfg['learning_rate']}, beta {cfg['beta']}, "
            f"SFT weight on chosen {cfg['sft_weight']}, weight decay {cfg['weight_decay']}, {cfg['epochs']} epochs, batch "
            f"{cfg['batch_size']}, seed {cfg['seed']}; greedy {cfg['max_new_tokens']} new tokens; judge "
            f"{meta['judge']}. Versions: safeneuron-plugins {meta['library_version']}, torch {meta['torch']}, "
            f"transformers {meta.get('transformers')}, trl {meta.get('trl')}. Total {meta['seconds']} s.")


def print_summary(result: dict[str, Any]) -> str:
    lines = [f"{'model':<18} {'ORI':>5} {'ES':>5} {'SAS':>5} {'FULL':>5} {'evasive':>8} {'over-ref':>8} "
             f"{'ppl':>7} {'KL':>7} {'frozen':>7}"]
    for name, m in result["models"].items():
        a = m["asr"]
        lines.append(f"{name:<18} {a['ORI']:>5.2f} {a['ES']:>5.2f} {a['SAS']:>5.2f} {a['FULL']:>5.2f} "
                     f"{m['rates']['FULL']['evasive']:>8.2f} {m['over_refusal']:>8.2f} {m['perplexity']:>7.2f} "
                     f"{m['kl']:>7.4f} {m.get('frozen_neurons', 0):>7}")
    return "\n".join(lines)


__all__ = ["ExperimentConfig", "VARIANTS", "run_experiment", "print_summary"]
