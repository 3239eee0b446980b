"""SafeNeuron for Axolotl: freeze the safety neurons during preference training.

Add to an existing Axolotl DPO (or IPO/ORPO/KTO/SimPO) config::

    plugins:
      - safeneuron_plugins.integrations.axolotl.SafeNeuronPlugin
    safeneuron_freeze: true

The plugin only translates the config into the core's Trainer callback
(:class:`~safeneuron_plugins.integrations.hf.SafeNeuronCallback`), which identifies or loads the
mask, freezes the policy's safety neurons exactly, and writes the mask to ``output_dir``. The
callback only sees the trainer's policy, so the reference model is never touched.

Vision-language models are refused with freezing on (:func:`check_supported`): Axolotl's preference
path takes no processor and no images (docs/vlm.md, "Training a VLM", has the evidence).
"""

from __future__ import annotations

import logging

from axolotl.integrations.base import BasePlugin
from axolotl.logging_config import AxolotlOrWarnErrorFilter
from axolotl.utils.dict import DictDefault
from axolotl.utils.logging import get_logger
from transformers import Trainer, TrainerCallback

from safeneuron_plugins.errors import UnsupportedSetupError
from safeneuron_plugins.options import SafeNeuronOptions, split_options
from safeneuron_plugins.training import warn_if_freezing_off

# Axolotl shows INFO records of `axolotl.*` loggers only; the core logs under `safeneuron`.
LOG = get_logger("axolotl.integrations.safeneuron")


class _ToAxolotlLog(logging.Handler):
    """Re-emit the core's records through an Axolotl logger, so its per-layer report is shown."""

    def emit(self, record: logging.LogRecord) -> None:
        LOG.log(record.levelno, record.getMessage())


def options_from_cfg(cfg: DictDefault) -> SafeNeuronOptions:
    """The ``safeneuron_*`` keys of a (validated) Axolotl config as core options."""
    ours, _ = split_options(cfg)
    return SafeNeuronOptions.from_dict(ours, source="the Axolotl config")


def check_supported(cfg: DictDefault) -> None:
    """Refuse freezing in preference training (``rl``) of a vision-language model.

    Axolotl's RL path loads no processor (``load_preference_datasets`` loads the tokenizer only), its
    DPO dataset strategies build text-only prompt/chosen/rejected strings, and its RL trainer builder
    passes the tokenizer as ``processing_class``: the images of a VLM preference set never reach the
    model. ``cfg.is_multimodal`` is Axolotl's own verdict on ``base_model`` (set by ``normalize_config``).
    """
    if not cfg.rl or not (cfg.is_multimodal or cfg.processor_type):
        return
    if not options_from_cfg(cfg).safeneuron_freeze:
        return
    from importlib.metadata import version

    rl = getattr(cfg.rl, "value", cfg.rl)
    raise UnsupportedSetupError(
        f"safeneuron_freeze: true with `rl: {rl}` on a vision-language model (`base_model: {cfg.base_model}`, "
        f"model_type {cfg.model_config_type or 'unknown'}) is not supported in Axolotl {version('axolotl')}: "
        "its preference-training path loads no processor, its DPO dataset types keep no images and its RL "
        "trainer gets the tokenizer as processing_class, so the images would never reach the model. Train "
        "the VLM with trl's DPOTrainer and SafeNeuronCallback (the processor as processing_class, an `images` "
        "column), or with `safeneuron-llamafactory train` (`stage: safeneuron_dpo`, a VL template such as "
        "`template: qwen2_vl`, an `images` column): see docs/vlm.md, 'Training a VLM'.")


class SafeNeuronPlugin(BasePlugin):
    """Axolotl plugin: adds the SafeNeuron freezing callback to the policy's trainer."""

    def get_input_args(self) -> str:
        return "safeneuron_plugins.integrations.axolotl.args.SafeNeuronArgs"

    def register(self, cfg: dict) -> None:
        # Route the core's log (frozen neurons per layer) through Axolotl's logger, under
        # AXOLOTL_LOG_LEVEL: Axolotl's logger class filters non-axolotl INFO records out.
        core = logging.getLogger("safeneuron")
        if not any(isinstance(h, _ToAxolotlLog) for h in core.handlers):
            core.filters = [f for f in core.filters if not isinstance(f, AxolotlOrWarnErrorFilter)]
            core.addHandler(_ToAxolotlLog())
            core.setLevel(logging.INFO)
            core.propagate = False

    def load_datasets(self, cfg: DictDefault, preprocess: bool = False) -> None:
        # The first hook after Axolotl resolved cfg.is_multimodal (train and preprocess): refuse before
        # any data or model is loaded. Returns None: Axolotl loads the datasets itself.
        check_supported(cfg)

    def pre_model_load(self, cfg: DictDefault) -> None:
        check_supported(cfg)  # for entry points that load their own datasets

    def add_callbacks_post_trainer(self, cfg: DictDefault, trainer: Trainer) -> list[TrainerCallback]:
        from safeneuron_plugins.integrations.hf import SafeNeuronCallback

        options = options_from_cfg(cfg)
        if not options.safeneuron_freeze:
            warn_if_freezing_off(options, where="the Axolotl config")
            return []
        # Axolotl builds one trainer per run; never attach a second callback to the same one.
        if any(isinstance(cb, SafeNeuronCallback) for cb in trainer.callback_handler.callbacks):
            return []
        # Axolotl passes resume_from_checkpoint to trainer.train() only; the callback reads the
        # checkpoint's mask from args (a field the Trainer itself leaves to scripts like this one).
        if cfg.resume_from_checkpoint and not trainer.args.resume_from_checkpoint:
            trainer.args.resume_from_checkpoint = str(cfg.resume_from_checkpoint)
        return [SafeNeuronCallback(options)]


__all__ = ["SafeNeuronPlugin", "check_supported", "options_from_cfg"]
