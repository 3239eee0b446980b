"""Does a mask belong to this model? A model's fingerprint (its structure and hashes of a few weights),
the comparison of a mask's fingerprint with a model's, and :func:`checked_layers`, which locates a
model's MLP layers only after checking the mask was made for it."""

from __future__ import annotations

import torch
from torch import nn

from .architectures import MLPLayer, find_mlp_layers
from .distributed import gathered

#: rows of each MLP projection (gate, up, down) of every layer that the weight sample hash reads
SAMPLE_ROWS = 4


def _sampled_rows(model: nn.Module, layers: list[MLPLayer]) -> list[torch.Tensor]:
    """SAMPLE_ROWS rows, spread evenly, of every MLP projection weight of every layer (on the CPU): a fine-tune
    that changed any layer's MLP changes some of them, and they stay cheap to read (a few MB on a 7B model)."""
    rows = []
    for layer in layers:
        for module in layer.modules(model):
            if module is None:
                continue
            weight = getattr(module, "base_layer", module).weight
            with gathered(weight) as weight:
                n = weight.shape[0]
                idx = torch.linspace(0, n - 1, min(SAMPLE_ROWS, n)).round().long().unique()
                rows.append(weight.detach().index_select(0, idx.to(weight.device)).to("cpu"))
    return rows


def fingerprint(model: nn.Module, layers: list[MLPLayer]) -> dict:
    """Structural identity of a model plus hashes of some of its weights (for mask checks).

    ``sample_hash`` hashes :data:`SAMPLE_ROWS` rows of every MLP projection of every layer; ``weight_hash``
    (kept so that masks written before the sample hash are still checked) the first 8 rows of layer 0's up
    projection. Each as the values are, and rounded to bfloat16 (``*_bf16``), so a model loaded in float32 and in
    bfloat16 give the same one (identification in bfloat16, training on float32 master weights). Quantized
    weights (bitsandbytes) have ``weight_quantized`` instead of the bfloat16 hashes."""
    import hashlib

    def digest(*ts: torch.Tensor) -> str:
        h = hashlib.sha256()
        for t in ts:
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

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
    sample = _sampled_rows(model, layers)
    hashes["sample_hash"] = digest(*(r.to(torch.float32) for r in sample))
    if all(r.is_floating_point() for r in sample):
        hashes["sample_hash_bf16"] = digest(*(r.to(torch.bfloat16).view(torch.int16) for r in sample))
    sizes = sorted({layer.intermediate_size for layer in layers})
    return {
        "model_type": getattr(config, "model_type", type(model).__name__),
        "num_layers": len(layers),
        "intermediate_size": sizes[0] if len(sizes) == 1 else [l.intermediate_size for l in layers],
        "hidden_size": getattr(text_config, "hidden_size", getattr(text_config, "n_embd", None)),
        **hashes,
    }


def compared_hash(mine: dict, theirs: dict) -> str:
    """The fingerprint key :func:`same_weights` compares: the weight sample hash when both have it (bfloat16-
    rounded when both have that), else layer 0's hash (masks written before the sample hash)."""
    for key in ("sample_hash_bf16", "sample_hash", "weight_hash_bf16"):
        if mine.get(key) and theirs.get(key):
            return key
    return "weight_hash"


def same_weights(mine: dict, theirs: dict) -> bool | None:
    """Whether a mask's fingerprint (``mine``) and a model's (``theirs``) hash the same weights: True when
    unknown (no hash in the mask), None when not comparable (one model's weights quantized, the other's not).
    The bfloat16-rounded hashes match a float32 copy of a model with its bfloat16 copy; the sample hash (rows of
    every layer) is compared when both have it, else layer 0's (masks written before it have that only)."""
    if not mine.get("weight_hash"):
        return True
    if bool(mine.get("weight_quantized")) != bool(theirs.get("weight_quantized")) and (
            "weight_hash_bf16" in mine or "weight_quantized" in mine):  # a fingerprint that says which it is
        return None
    key = compared_hash(mine, theirs)
    return mine[key] == theirs.get(key)


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
