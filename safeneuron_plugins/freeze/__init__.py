"""Freeze the safety neurons exactly during training (paper, Sec. 3.2).

- ``core``: :class:`NeuronFreezer`, gradient zeroing plus restore-after-step, bit-identical weights;
- ``lora``: which parameters produce a neuron, including a PEFT LoRA adapter's A and B;
- ``engines``: where the frozen entries live under FSDP2 and DeepSpeed ZeRO-1/2/3.

Forward pruning (zeroing neurons' activations) is :func:`safeneuron_plugins.prune.pruned`.
"""

from .core import NeuronFreezer
from .engines import FrozenEntries

__all__ = ["FrozenEntries", "NeuronFreezer"]
