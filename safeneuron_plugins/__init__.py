"""SafeNeuron: neuron-level safety alignment for the fine-tuning frameworks people already use.

Score MLP neurons on harmful vs harmless prompts, select the safety neurons, save them as a mask,
freeze them while preference training updates everything else, and check the result against the
neuron pruning attack.

The package reads like the paper: ``identify/`` finds the safety neurons, ``freeze/`` keeps them
exactly unchanged during training (``prune.py`` zeroes them, for the attack and forward pruning),
``evaluate/`` generates, judges, attacks and reports; ``experiment.py`` runs the whole reproduction.
"""

import sys

__version__ = "0.1.0"

from .errors import SafeNeuronError  # noqa: E402
from .identify import identify  # noqa: E402  (the function; the subpackage stays importable by path)
from .mask import NeuronMask  # noqa: E402
from .options import SafeNeuronOptions  # noqa: E402


class _Package(type(sys)):
    """Python sets a package's attribute to each submodule it imports; ``identify`` is both the function
    above and the subpackage ``safeneuron_plugins.identify``. The import above binds the function last,
    and this guard keeps it so whatever is imported later (``from safeneuron_plugins import identify``
    gave the module once, when the function was bound lazily)."""

    def __setattr__(self, name, value):
        if name == "identify" and isinstance(value, type(sys)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["NeuronMask", "SafeNeuronError", "SafeNeuronOptions", "identify", "__version__"]
