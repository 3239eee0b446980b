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
"""

from .args import SAFENEURON_STAGE, prepare_train_args

__all__ = ["SAFENEURON_STAGE", "prepare_train_args"]
