"""SafeNeuron: neuron-level safety alignment for the fine-tuning frameworks people already use.

Score MLP neurons on harmful vs harmless prompts, select the safety neurons, save them as a mask,
freeze them while preference training updates everything else, and check the result against the
neuron pruning attack.
"""

__version__ = "0.1.0"

from .errors import SafeNeuronError  # noqa: E402
from .mask import NeuronMask  # noqa: E402
from .options import SafeNeuronOptions  # noqa: E402


def identify(*args, **kwargs):
    """Identify safety neurons; see :func:`safeneuron_plugins.identify.identify`."""
    from .identify import identify as _identify

    return _identify(*args, **kwargs)


__all__ = ["NeuronMask", "SafeNeuronError", "SafeNeuronOptions", "identify", "__version__"]
