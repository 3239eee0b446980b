"""SafeNeuron: neuron-level safety alignment for the fine-tuning frameworks people already use.

Score MLP neurons on harmful vs harmless prompts, select the safety neurons, save them as a mask,
freeze them while preference training updates everything else, and check the result against the
neuron pruning attack.

The package reads like the paper: ``identification/`` finds the safety neurons, ``freeze/`` keeps them
exactly unchanged during training (``prune.py`` zeroes them, for the attack and forward pruning),
``evaluate/`` generates, judges, attacks and reports; ``experiment/`` runs the whole reproduction.
"""

from .errors import SafeNeuronError
from .identification import identify
from .mask import NeuronMask
from .options import SafeNeuronOptions
from .version import __version__

__all__ = ["NeuronMask", "SafeNeuronError", "SafeNeuronOptions", "identify", "__version__"]
