"""Freeze the safety neurons exactly during training (paper, Sec. 3.2).

- ``core``: :class:`NeuronFreezer`, gradient zeroing plus restore-after-step, bit-identical weights;
- ``lora``: which parameters produce a neuron, including a PEFT LoRA adapter's A and B;
- ``engines``: where the frozen entries live under FSDP2 and DeepSpeed ZeRO-1/2/3.

Forward pruning (zeroing neurons' activations) is :func:`safeneuron_plugins.prune.pruned`.
"""

from .core import FrozenEntries, NeuronFreezer


def __getattr__(name: str):
    # the old module safeneuron_plugins.freeze also held the pruning hook and the engines' helpers
    from .._moved import moved_name

    return moved_name(__name__, name, "safeneuron_plugins.prune", "safeneuron_plugins.freeze.core",
                      "safeneuron_plugins.freeze.engines", "safeneuron_plugins.freeze.lora",
                      "safeneuron_plugins.distributed")


__all__ = ["FrozenEntries", "NeuronFreezer"]
