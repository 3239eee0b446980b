"""LLaMA-Factory adapter: a ``safeneuron_dpo`` training stage for its CLI and its web UI.

LLaMA-Factory has no plugin system and rejects unknown YAML keys, so this adapter wraps its public
entry points instead of forking it: ``safeneuron-llamafactory train config.yaml`` strips the
``safeneuron_*`` keys, builds :class:`~safeneuron_plugins.integrations.hf.SafeNeuronCallback` from
them and calls ``llamafactory.train.tuner.run_exp(args, callbacks=[callback])``;
``safeneuron-llamafactory webui`` starts LLaMA Board with a "DPO + SafeNeuron" stage. Nothing of
LLaMA-Factory is patched on disk.

- :mod:`.args`: translating a LLaMA-Factory config (YAML/JSON dict or ``--key value`` list).
- :mod:`.launcher`: ``train`` in one process, or re-exec of our own worker under torchrun.
- :mod:`.webui`: the LLaMA Board extension.
- :mod:`.compat`: the torchaudio stand-in for CPU environments without a working torchaudio.
- :mod:`.cli`: the ``safeneuron-llamafactory`` command.

What is patched, and why (written against LLaMA-Factory 0.9.5, :data:`.compat.TESTED_VERSION`, the
version ``pyproject.toml``'s ``llamafactory`` extra and ``scripts/env_llamafactory.sh`` pin; another
version logs a warning naming it). Everything is in this process, in memory, and only what the host
offers no public way to do:

- training, nothing patched: ``run_exp(args, callbacks=...)`` is public. Forced by the host: its YAML
  reader rejects unknown keys, so ours are stripped first (:mod:`.args`); its launcher re-executes its
  own ``launcher.py`` under torchrun, which would lose the callback, so :mod:`.launcher` re-executes our
  worker under the same torchrun command (same environment variables, same rule for when);
  ``llamafactory.data.mm_plugin`` imports torchaudio unconditionally, for which no CPU wheel matches
  torch 2.13 (:mod:`.compat`).
- web UI (:mod:`.webui`), since LLaMA Board has no stage or panel registry:
  ``extras.constants.TRAINING_STAGES`` and ``STAGES_USE_PAIR_DATA`` gain the stage (the shared dict is
  updated in place); ``webui.runner.Runner`` is subclassed, overriding its private
  ``_parse_train_args`` (write our options and the DPO settings), ``_initialize`` (validate before
  preview/start) and ``_preview`` (show our command); ``webui.runner.Popen`` is wrapped so that the
  ``llamafactory-cli train`` it starts is our entry point; ``webui.interface.create_train_tab`` is
  wrapped to add the panel, with ``manager.get_base_elems`` widened while the tab is built so its
  buttons carry our fields. Each is idempotent and checked by ``tests/llamafactory/test_webui.py`` in
  a real browser.
"""

from .args import SAFENEURON_STAGE, prepare_train_args

__all__ = ["SAFENEURON_STAGE", "prepare_train_args"]
