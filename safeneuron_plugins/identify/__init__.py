"""Identify the safety neurons (paper, Sec. 3.1): prompts -> activations -> statistics -> scores -> mask.

- ``prompts``: prompt sets (built-in, files, Hugging Face datasets) and chat formatting;
- ``batching``: tokenizing, length-grouped batches, padding;
- ``activations``: forward hooks recording pooled per-prompt MLP activations;
- ``stats``: running per-neuron mean and variance;
- ``scoring``: effect size, activation shift, selection, the NeuroStrike probe;
- ``attribution``: activation x gradient scores toward a refusal;
- ``pipeline``: :func:`identify`, which runs the above and returns a :class:`~safeneuron_plugins.NeuronMask`.

``safeneuron_plugins.identify`` (the package attribute) is the function :func:`identify`; this
subpackage is reached by its import path (``from safeneuron_plugins.identify.scoring import select``).
"""

from .pipeline import ATTRIBUTION_RATIO, collect_matrix, collect_statistics, identify


def __getattr__(name: str):
    # the old module safeneuron_plugins.identify had its helpers at this path
    from .._moved import moved_name

    return moved_name(__name__, name, "safeneuron_plugins.identify.pipeline")


__all__ = ["ATTRIBUTION_RATIO", "collect_matrix", "collect_statistics", "identify"]
