"""Identify the safety neurons (paper, Sec. 3.1): prompts -> activations -> statistics -> scores -> mask.

- ``prompts``: prompt sets (built-in, files, Hugging Face datasets) and chat formatting;
- ``batching``: tokenizing, length-grouped batches, padding;
- ``activations``: forward hooks recording pooled per-prompt MLP activations;
- ``stats``: running per-neuron mean and variance;
- ``scoring``: effect size, activation shift, selection, the NeuroStrike probe;
- ``attribution``: activation x gradient scores toward a refusal;
- ``pipeline``: :func:`identify`, which runs the above and returns a :class:`~safeneuron_plugins.NeuronMask`.

The package root exports the function (``from safeneuron_plugins import identify``); the steps are
imported by path (``from safeneuron_plugins.identification.scoring import select``).
"""

from .pipeline import ATTRIBUTION_RATIO, collect_matrix, collect_statistics, identify

__all__ = ["ATTRIBUTION_RATIO", "collect_matrix", "collect_statistics", "identify"]
