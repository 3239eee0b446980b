"""bitsandbytes 4-bit bases (QLoRA) on CPUs: keep SafeNeuron's forward passes off the packed-weight path.

On a CPU with AVX512-BF16, bitsandbytes (0.49 and later) converts a ``Linear4bit`` weight *in place* to a
packed layout the first time the layer runs in eval mode without gradients, and from then on computes
the layer with an inference kernel. Two consequences that a CPU without that feature never shows:

- the conversion fails for layers whose in_features is not a multiple of the 64-element quantisation
  block or whose out_features is not a multiple of 32 (``shape '[32, 0]' is invalid``);
- a converted layer passes no gradient to its input in a training forward pass, so every LoRA adapter
  before it would train on a wrong gradient, silently.

SafeNeuron's identification runs in eval mode right before training, so it would trigger both.
:func:`unpacked_bnb_weights` switches the conversion off for the duration of such a pass, and
:func:`check_no_packed_bnb_weights` refuses to start freezing on weights that something else converted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from .errors import UnsupportedSetupError


@contextlib.contextmanager
def unpacked_bnb_weights(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, no bitsandbytes 4-bit layer of ``model`` converts its weight to the packed CPU
    layout (the path CPUs without AVX512-BF16 always take). Yields the names of the layers switched."""
    switched = [(name, module, module.support_avx512bf16_for_cpu) for name, module in model.named_modules()
                if getattr(module, "support_avx512bf16_for_cpu", False)]  # bitsandbytes stores the C call's int
    for _, module, _ in switched:
        module.support_avx512bf16_for_cpu = False
    try:
        yield [name for name, _, _ in switched]
    finally:
        for _, module, value in switched:
            module.support_avx512bf16_for_cpu = value


def packed_bnb_layers(model: nn.Module) -> list[str]:
    """Names of the bitsandbytes 4-bit layers whose weight is in the packed CPU inference layout."""
    return [name for name, module in model.named_modules()
            if getattr(getattr(getattr(module, "weight", None), "quant_state", None), "packing_format_for_cpu", False)]


def check_no_packed_bnb_weights(model: nn.Module) -> None:
    """Raise :class:`UnsupportedSetupError` when bitsandbytes already converted 4-bit weights to its CPU
    inference layout: training through them gives earlier layers no gradient."""
    packed = packed_bnb_layers(model)
    if packed:
        raise UnsupportedSetupError(
            f"bitsandbytes converted the 4-bit weights of {len(packed)} layers (e.g. {packed[0]}) to its CPU "
            "inference layout (an eval-mode forward pass ran before training on this CPU with AVX512-BF16); "
            "training through those layers gives the layers before them no gradient. Load the model again and "
            "start training before any eval-mode forward pass (SafeNeuron's own passes leave the weights "
            "as they are), or train on a GPU.")
