"""SafeNeuron: neuron-level safety alignment for the fine-tuning frameworks people already use.

Score MLP neurons on harmful vs harmless prompts, select the safety neurons, save them as a mask,
freeze them while preference training updates everything else, and check the result against the
neuron pruning attack.
"""

import sys

__version__ = "0.1.0"

from .errors import SafeNeuronError  # noqa: E402
from .mask import NeuronMask  # noqa: E402
from .options import SafeNeuronOptions  # noqa: E402


def identify(*args, **kwargs):
    """Identify safety neurons; see :func:`safeneuron_plugins.identify.identify`."""
    from .identify import identify as _identify

    return _identify(*args, **kwargs)


class _Package(type(sys)):
    """Importing the submodule ``safeneuron_plugins.identify`` makes Python set the package's attribute
    ``identify`` to that module, which would replace the function above: ``from safeneuron_plugins
    import identify`` then gave a module once anything had imported the submodule (training does)."""

    def __setattr__(self, name, value):
        if name == "identify" and isinstance(value, type(sys)):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["NeuronMask", "SafeNeuronError", "SafeNeuronOptions", "identify", "__version__"]
