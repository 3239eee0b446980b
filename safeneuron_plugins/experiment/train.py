"""Training one variant of the experiment: DPO with trl from the original model, the SafeNeuron callback
in place (or not, for the plain baseline), resumable from its checkpoints."""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..files import CHUNKS, TRAINING, write_file
from ..files import MANIFEST as MANIFEST_FILE
from ..mask import NeuronMask
from .config import ExperimentConfig, _check_same_variant, check_gradient_accumulation, variant_options
from .console import metrics_to_file

logger = logging.getLogger("safeneuron")


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

    from ..integrations.hf import SafeNeuronCallback
    from ..models import default_model_path

    done = out / "training.json"
    if done.is_file():  # trained by an earlier, interrupted invocation of the same experiment
        facts = json.loads(done.read_text())
        _check_same_variant(name, facts["options"], variant_options(cfg, name, mask_path, identify), done)
        check_manifest(out, pairs_path)
        logger.info("%s: already trained (%s); reusing it", name, done)
        return facts
    check_gradient_accumulation(cfg)  # before the model is loaded
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
    elif cfg.precompute_ref:  # trl computes the reference log-probs with the policy before its first step
        ref = None
    else:
        ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if cfg.freeze_embeddings:  # the input embedding (and an LM head tied to it) stays as it is
        model.get_input_embeddings().weight.requires_grad_(False)
        model.enable_input_require_grads()  # gradient checkpointing still needs a graph from the inputs
    tok = transformers.AutoTokenizer.from_pretrained(path)
    data = datasets.load_dataset("json", data_files=str(pairs_path), split="train").remove_columns("kind")
    options = variant_options(cfg, name, mask_path, identify)
    callback = SafeNeuronCallback(**options)
    on_gpu = (cfg.device or "").startswith("cuda")
    args = trl.DPOConfig(
        output_dir=str(out), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size // cfg.gradient_accumulation,
        gradient_accumulation_steps=cfg.gradient_accumulation, learning_rate=cfg.learning_rate, beta=cfg.beta,
        loss_type=["sigmoid", "sft"] if cfg.sft_weight else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight else None, weight_decay=cfg.weight_decay, lr_scheduler_type="cosine",
        optim=cfg.optim,
        max_length=cfg.max_length, logging_steps=1, report_to="none", seed=cfg.seed,
        save_strategy="steps" if cfg.save_steps else "no", save_steps=cfg.save_steps or 500, save_total_limit=1,
        use_cpu=not on_gpu, disable_tqdm=not cfg.progress,
        # bf16 mixed precision on a GPU only: trl defaults to bf16, and on CPUs without native bf16 that
        # falls back to a slow scalar GEMM (measured 309 s vs ~20 s per step on this machine)
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        precompute_ref_log_probs=cfg.precompute_ref, gradient_checkpointing=cfg.gradient_checkpointing)
    clock = _step_clock(cfg.max_train_minutes)
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                             callbacks=[callback, clock, *callbacks], peft_config=peft_config)
    metrics_to_file(trainer, out / "train_log.jsonl", cfg.progress)  # trl's metric dicts: a file, not the console
    start = time.perf_counter()
    if checkpoints:
        logger.info("%s: resuming from %s", name, checkpoints[-1])
    first_step = int(checkpoints[-1].name.split("-")[1]) if checkpoints else 0
    trainer.train(resume_from_checkpoint=str(checkpoints[-1]) if checkpoints else None)
    chunks = _record_chunk(out, first_step, trainer.state.global_step, time.perf_counter() - start, clock)
    if trainer.state.global_step < trainer.state.max_steps:  # the chunk's time ran out; a checkpoint was saved
        raise TrainingChunkEnded(
            f"{name}: trained {cfg.max_train_minutes:g} minutes to step {trainer.state.global_step} of "
            f"{trainer.state.max_steps} ({_peak_rss_gb():.1f} GB peak RSS); checkpoint in {out}. Run the same "
            "command again to resume.")
    if peft_config is not None:  # evaluate and ship the merged model: W + B.A, exactly W on frozen rows
        trainer.model.merge_and_unload().save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    tok.save_pretrained(str(out))
    logs = [h for h in trainer.state.log_history if "loss" in h]
    facts = {**_chunk_totals(chunks), "steps": trainer.state.global_step,
             "final_loss": logs[-1]["loss"] if logs else None,
             "final_reward_margin": logs[-1].get("rewards/margins") if logs else None,
             "frozen_neurons": callback.mask.num_neurons if callback.mask is not None else 0,
             "options": {k: v for k, v in options.items() if k != "safeneuron_mask"},
             "resumed_from": checkpoints[-1].name if checkpoints else None}
    rows = getattr(callback.run, "prune_rows", None)
    if rows is not None:  # safeneuron_forward_prune_prompts: the policy's training rows pruned, of those it ran
        facts["pruned_rows"] = {"matched": rows.matched, "seen": rows.seen}
    if "safeneuron_mask" in options:  # T0; frozen_neurons is the union after re-identification
        facts["frozen_neurons_t0"] = NeuronMask.load(options["safeneuron_mask"]).num_neurons
    write_file(done, json.dumps(facts, indent=2), "--output-dir", TRAINING)
    write_manifest(out, cfg, name, options, pairs_path)
    for ckpt in out.glob("checkpoint-*"):  # the model is saved; optimizer states are GBs at this size
        shutil.rmtree(ckpt, ignore_errors=True)
    del trainer, model, ref
    gc.collect()
    return facts


MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(out: Path, cfg: ExperimentConfig, name: str, options: dict[str, Any], pairs_path: Path) -> None:
    """``out/manifest.json``: what the trained model in ``out`` is (the experiment's settings, the variant's
    options, the pairs' and every weight file's sha256), so that a later invocation, possibly in another
    session, reuses it only when it is intact and was trained from the same data."""
    from dataclasses import asdict

    weights = {f.name: _sha256(f) for f in sorted(out.glob("*.safetensors")) if f.name != "safeneuron_mask.safetensors"}
    manifest = {"variant": name, "config": asdict(cfg),
                "options": {k: v for k, v in options.items() if k != "safeneuron_mask"},
                "pairs_sha256": _sha256(pairs_path), "weights_sha256": weights}
    write_file(out / MANIFEST, json.dumps(manifest, indent=2), "--output-dir", MANIFEST_FILE)


def check_manifest(out: Path, pairs_path: Path) -> None:
    """Refuse to reuse the trained model in ``out`` when its weights or the pairs differ from its manifest's."""
    from ..errors import OptionsError

    path = out / MANIFEST
    if not path.is_file():
        return  # trained before manifests were written
    manifest = json.loads(path.read_text())
    if manifest["pairs_sha256"] != _sha256(pairs_path):
        raise OptionsError(f"{out}: trained on other pairs than {pairs_path} holds now (manifest {path}); delete the "
                           "model directory to train it again.")
    for file, digest in manifest["weights_sha256"].items():
        if not (out / file).is_file() or _sha256(out / file) != digest:
            raise OptionsError(f"{out / file}: missing or changed since training (manifest {path}); delete the "
                               "model directory to train it again.")


def _record_chunk(out: Path, first_step: int, last_step: int, seconds: float, clock) -> list[dict[str, Any]]:
    """Add this invocation's chunk to ``out/chunks.json`` (a run from step 0 starts a new record) and return the
    record: the steps it trained, its seconds, the seconds of each step after its first, its peak RSS."""
    path = out / "chunks.json"
    chunks = json.loads(path.read_text())["chunks"] if first_step and path.is_file() else []
    chunks = [c for c in chunks if c["to_step"] <= first_step]  # a chunk whose checkpoint was lost is redone
    chunks.append({"from_step": first_step, "to_step": last_step, "seconds": round(seconds, 1),
                   "step_seconds": [round(b - a, 2) for a, b in zip(clock.stamps, clock.stamps[1:])],
                   "peak_rss_gb": round(_peak_rss_gb(), 2)})
    write_file(path, json.dumps({"chunks": chunks}, indent=1), "--output-dir", CHUNKS)
    return chunks


def _chunk_totals(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """Training facts over every chunk of a run: total and longest chunk seconds, median step, peak RSS."""
    steps = sorted(x for c in chunks for x in c["step_seconds"])
    return {"train_seconds": round(sum(c["seconds"] for c in chunks), 1), "chunks": len(chunks),
            "longest_chunk_seconds": max(c["seconds"] for c in chunks),
            "median_step_seconds": steps[len(steps) // 2] if steps else None,
            "peak_rss_gb": max(c["peak_rss_gb"] for c in chunks)}


class TrainingChunkEnded(Exception):
    """An invocation's training time (``max_train_minutes``) ran out before the last step; the run resumes from
    the checkpoint it saved."""


def _step_clock(max_minutes: float = 0):
    """A callback recording when each optimizer step ended; with
    ``max_minutes`` it saves a checkpoint and stops training once that much time has passed."""
    import transformers

    class StepClock(transformers.TrainerCallback):
        def __init__(self):
            self.stamps: list[float] = []
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())
            if max_minutes and self.stamps[-1] - self.start > 60 * max_minutes and state.global_step < state.max_steps:
                control.should_save = True
                control.should_training_stop = True

    return StepClock()


def _peak_rss_gb() -> float:
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20
