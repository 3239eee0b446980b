"""Hugging Face Trainer / trl adapter: a TrainerCallback that freezes the safety neurons.

    from safeneuron_plugins.integrations.hf import SafeNeuronCallback
    trainer = DPOTrainer(..., callbacks=[SafeNeuronCallback(safeneuron_freeze=True)])

Works with any transformers Trainer (trl's DPO, SFT, ORPO, KTO trainers included). The options are
the ``safeneuron_*`` fields of :class:`safeneuron_plugins.SafeNeuronOptions`. Every training log gets the
``safeneuron/*`` figures (neurons and parameters frozen, the largest drift of a frozen entry, the
re-identifications, the share of passes trained under pruning), so ``report_to`` shows them.
"""

from __future__ import annotations

import os
import sys

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

from safeneuron_plugins.errors import UnsupportedSetupError
from safeneuron_plugins.options import SafeNeuronOptions
from safeneuron_plugins.training import SafeNeuronTraining, warn_if_freezing_off


def _check_setup(args) -> None:
    """Refuse set-ups where the freezing hooks would not see the real parameters."""
    ds = getattr(args, "hf_deepspeed_config", None)
    zero = (getattr(ds, "config", None) or {}).get("zero_optimization", {}) if ds is not None else {}
    for part in ("offload_param", "offload_optimizer"):
        if str((zero.get(part) or {}).get("device", "none")).lower() == "nvme":
            raise UnsupportedSetupError(
                f"safeneuron_freeze does not support DeepSpeed zero_optimization.{part}.device=nvme (the "
                "frozen entries are restored in memory after every step, and NVMe-swapped partitions are not "
                "resident). Offload to 'cpu' instead, or drop the offload.")
    if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        config = getattr(args, "fsdp_config", None) or {}
        version = int(config.get("version", config.get("fsdp_version", os.environ.get("FSDP_VERSION", 2))))
        if version != 2:
            raise UnsupportedSetupError(
                "safeneuron_freeze needs FSDP2 (fsdp_config version 2): FSDP1 flattens parameters, so the rows "
                "to freeze cannot be addressed. Set fsdp_config={'version': 2} or train with DDP.")


def _first_among_callbacks(callback: TrainerCallback, caller) -> None:
    """Move ``callback`` to the front of the Trainer's callbacks, so that the figures its ``on_log`` adds reach
    the reporting callbacks (TensorBoard, W&B, MLflow, the hosts' own loggers), which the Trainer lists before
    the ones a user passes. ``caller``: the frame that called the event, ``CallbackHandler.call_event``, the
    only place that holds the list; nothing moves when it is not that. Moving the running callback forward
    during an event skips or repeats no other callback (the ones it passes have had the event already)."""
    handler = caller.f_locals.get("self")
    if isinstance(handler, CallbackHandler) and any(cb is callback for cb in handler.callbacks):
        handler.callbacks.remove(callback)
        handler.callbacks.insert(0, callback)


class SafeNeuronCallback(TrainerCallback):
    """Freeze SafeNeuron safety neurons exactly during training (no-op unless safeneuron_freeze)."""

    def __init__(self, options: SafeNeuronOptions | None = None, **safeneuron_kwargs) -> None:
        if options is not None and safeneuron_kwargs:
            raise TypeError("pass either options= or safeneuron_* keyword arguments, not both")
        self.options = options or SafeNeuronOptions.from_dict(safeneuron_kwargs,
                                                               source="SafeNeuronCallback(...)")
        self.run = SafeNeuronTraining(self.options)
        warn_if_freezing_off(self.options, None if options is not None else safeneuron_kwargs,
                             where="SafeNeuronCallback(...)")

    @property
    def mask(self):
        return self.run.mask

    def on_train_begin(self, args, state, control, model=None, processing_class=None, optimizer=None,
                       **kwargs):
        if not self.options.safeneuron_freeze:
            return
        _check_setup(args)
        _first_among_callbacks(self, sys._getframe(1))
        resume_dir = None
        if state.global_step > 0:  # the Trainer restored a checkpoint before this event
            resume_dir = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if isinstance(args.resume_from_checkpoint, str) and os.path.isdir(args.resume_from_checkpoint):
                resume_dir = args.resume_from_checkpoint
        self.run.begin(model, processing_class, output_dir=args.output_dir if state.is_world_process_zero
                       else None, resume_dir=resume_dir, optimizer=optimizer)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """Add the SafeNeuron figures (:meth:`SafeNeuronTraining.dashboard`, keys ``safeneuron/...``) to the
        Trainer's training logs, which every reporting integration writes (TensorBoard and W&B show them as
        ``train/safeneuron/...``), and to the log history (trainer_state.json). Not to evaluation logs, nor to
        the run's closing summary (``train_runtime``, logged at the last step again)."""
        if logs is None or "train_runtime" in logs or any(k.startswith(("eval_", "test_")) for k in logs):
            return
        figures = self.run.dashboard()
        logs.update(figures)
        if figures and state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(figures)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.run.after_optimizer_step()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if self.run.freezer is None or state.global_step >= state.max_steps:
            return
        steps = self.options.safeneuron_reidentify_steps
        if steps and state.global_step % steps == 0:
            self.run.reidentify(optimizer, args.output_dir)
        steps = self.options.safeneuron_adversarial_steps
        if steps and state.global_step % steps == 0:
            self.run.attack(args.output_dir)

    def on_epoch_end(self, args, state, control, optimizer=None, **kwargs):
        if self.run.freezer is not None and self.options.safeneuron_reidentify_on_epoch_end \
                and state.global_step < state.max_steps:
            self.run.reidentify(optimizer, args.output_dir)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(checkpoint):
            self.run.save(checkpoint)

    def on_train_end(self, args, state, control, **kwargs):
        self.run.end(args.output_dir)
