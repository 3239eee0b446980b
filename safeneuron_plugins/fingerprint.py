"""Does a mask belong to this model? A model's fingerprint (its structure and hashes of a few weights),
the comparison of a mask's fingerprint with a model's, and :func:`checked_layers`, which locates a
model's MLP layers only after checking the mask was made for it."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import MLPLayer, find_mlp_layers
from .distributed import gathered


def fingerprint(model: nn.Module, layers: list[MLPLayer]) -> dict:
    """Structural identity of a model plus hashes of a few of its weights (for mask checks).

    ``weight_hash`` hashes the values as they are; ``weight_hash_bf16`` the values rounded to bfloat16,
    so a model loaded in float32 and in bfloat16 give the same one (identification in bfloat16, training
    on float32 master weights). Quantized weights (bitsandbytes) have ``weight_quantized`` instead."""
    import hashlib

    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]

    config = getattr(model, "config", None)
    text_config = getattr(config, "text_config", None) or config
    weight = layers[0].modules(model)[1]
    weight = getattr(weight, "base_layer", weight).weight
    with gathered(weight) as weight:
        rows = (weight[:, :8] if layers[0].conv1d else weight[:8]).detach().to("cpu")
        hashes = {"weight_hash": digest(rows.to(torch.float32))}
        if rows.is_floating_point():
            hashes["weight_hash_bf16"] = digest(rows.to(torch.bfloat16).view(torch.int16))
        else:
            hashes["weight_quantized"] = True
    sizes = sorted({layer.intermediate_size for layer in layers})
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "num_layers": len(layers),
        "intermediate_size": sizes[0] if len(sizes) == 1 else [l.intermediate_size for l in layers],
        "hidden_size": getattr(text_config, "hidden_size", getattr(text_config, "n_embd", None)),
        **hashes,
    }


def same_weights(mine: dict, theirs: dict) -> bool | None:
    """Whether a mask's fingerprint (``mine``) and a model's (``theirs``) hash the same weights: True when
    unknown (no hash in the mask), None when not comparable (one model's weights quantized, the other's not).
    The bfloat16-rounded hash matches a float32 copy of a model with its bfloat16 copy; masks written before
    it have the exact hash only."""
    if not mine.get("weight_hash"):
        return True
    if mine.get("weight_hash_bf16") and theirs.get("weight_hash_bf16"):
        return mine["weight_hash_bf16"] == theirs["weight_hash_bf16"]
    if "weight_hash_bf16" in mine or "weight_quantized" in mine:  # a fingerprint that says which it is
        if bool(mine.get("weight_quantized")) != bool(theirs.get("weight_quantized")):
            return None
    return mine["weight_hash"] == theirs.get("weight_hash")


def checked_layers(model: nn.Module, mask, mlp_modules: str | None = None, *, what: str,
                   allow_other_weights: bool = False) -> list[MLPLayer]:
    """The model's MLP layers, after checking that ``mask`` (a NeuronMask) was made for this model
    (raises MaskMismatchError naming ``what``); a mask made on other weights of the same architecture is an
    error too unless ``allow_other_weights`` (then logged as a warning)."""
    import logging

    layers = find_mlp_layers(model, mlp_modules)
    for warning in mask.check_compatible(fingerprint(model, layers), what=what,
                                         allow_other_weights=allow_other_weights):
        logging.getLogger("safeneuron").warning(warning)
    return layers
