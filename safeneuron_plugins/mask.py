"""The safety-neuron mask: per-layer neuron indices plus metadata, stored as safetensors."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MaskFormatError, MaskMismatchError
from .files import MASK, check_destination, write_file

FORMAT_VERSION = 1
_STRUCTURAL = ("num_layers", "intermediate_size", "hidden_size", "model_type")


@dataclass
class NeuronMask:
    """Safety neurons of one model.

    ``neurons[layer]`` is the sorted list of selected neuron indices of that decoder layer;
    ``es`` and ``sas`` hold the neurons meeting each criterion (used for the ES(SN-) and SAS(SN-)
    pruning conditions and the per-layer report). ``metadata`` records how the mask was made,
    including the model ``fingerprint``.
    """

    neurons: dict[int, list[int]]
    es: dict[int, list[int]] = field(default_factory=dict)
    sas: dict[int, list[int]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    source = None  # the file NeuronMask.load read it from (named in check_compatible's messages); not a field

    def __post_init__(self) -> None:
        self.neurons = _normalise(self.neurons)
        self.es = _normalise(self.es)
        self.sas = _normalise(self.sas)
        for name, sets in (("es", self.es), ("sas", self.sas)):
            for layer, idx in sets.items():
                stray = set(idx) - set(self.neurons.get(layer, ()))
                if stray:
                    raise MaskFormatError(
                        f"NeuronMask: its {name} set holds neuron {min(stray)} of layer {layer}, which is not among the "
                        f"selected neurons of that layer; the ES and SAS sets are subsets of the selected neurons "
                        "(re-create the mask with `safeneuron identify`).")

    # --- counts --------------------------------------------------------------------------
    @property
    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.metadata.get("fingerprint", {})

    def cells(self) -> set[tuple[int, int]]:
        """The selected neurons as a set of (layer, index): masks compare and overlap independent of order."""
        return {(layer, i) for layer, idx in self.neurons.items() for i in idx}

    def total_neurons_in_model(self) -> int | None:
        fp = self.fingerprint
        size, layers = fp.get("intermediate_size"), fp.get("num_layers")
        if isinstance(size, list):
            return sum(size)
        return size * layers if size and layers else None

    def per_layer_breakdown(self) -> list[dict[str, int]]:
        """Per layer: selected, ES-only, SAS-only, both."""
        rows = []
        for layer in sorted(self.neurons):
            chosen = set(self.neurons[layer])
            es, sas = set(self.es.get(layer, [])) & chosen, set(self.sas.get(layer, [])) & chosen
            rows.append({"layer": layer, "selected": len(chosen), "es_only": len(es - sas),
                         "sas_only": len(sas - es), "both": len(es & sas)})
        return rows

    def subset(self, which: str) -> NeuronMask:
        """The mask of one criterion: ``full`` (selected), ``es`` or ``sas``."""
        source = {"full": self.neurons, "es": self.es, "sas": self.sas}[which]
        return NeuronMask({l: list(v) for l, v in source.items()}, metadata=dict(self.metadata))

    def restrict_layers(self, layers: set[int] | list[int]) -> NeuronMask:
        keep = set(layers)
        pick = lambda d: {l: v for l, v in d.items() if l in keep}  # noqa: E731
        return NeuronMask(pick(self.neurons), pick(self.es), pick(self.sas), dict(self.metadata))

    def union(self, other: NeuronMask) -> NeuronMask:
        """Neurons in either mask (iterative identification); metadata of self, history extended."""
        merge = lambda a, b: {l: sorted(set(a.get(l, [])) | set(b.get(l, []))) for l in set(a) | set(b)}  # noqa: E731
        meta = dict(self.metadata)
        meta["rounds"] = int(self.metadata.get("rounds", 1)) + 1
        return NeuronMask(merge(self.neurons, other.neurons), merge(self.es, other.es),
                          merge(self.sas, other.sas), meta)

    # --- checks --------------------------------------------------------------------------
    def check_compatible(self, fingerprint: dict[str, Any], *, what: str = "safeneuron_mask",
                         allow_other_weights: bool = False) -> list[str]:
        """Raise :class:`MaskMismatchError` when the mask's model differs in structure from
        ``fingerprint``, or has other weights of the same architecture (e.g. the base model of a
        fine-tune) unless ``allow_other_weights``; return warnings (the weights that differ, when
        allowed, or that cannot be compared: one side quantized)."""
        from .fingerprint import compared_hash, same_weights

        if self.source and self.source not in what:
            what = f"{what} ({self.source})"
        mine = self.fingerprint
        for key in _STRUCTURAL:
            if key in mine and key in fingerprint and mine[key] != fingerprint[key]:
                raise MaskMismatchError(
                    f"{what}: the mask was made for a different model: {key} is {mine[key]!r} in the "
                    f"mask but {fingerprint[key]!r} in this model. Re-run `safeneuron identify` on this "
                    "model (or unset the mask to identify during training).")
        sizes = fingerprint.get("intermediate_size")
        for layer, idx in self.neurons.items():
            size = sizes[layer] if isinstance(sizes, list) else sizes
            if layer < 0 or layer >= fingerprint.get("num_layers", layer + 1):
                raise MaskMismatchError(f"{what}: layer {layer} is not in this model "
                                        f"({fingerprint.get('num_layers')} layers).")
            if idx and size is not None and idx[-1] >= size:
                raise MaskMismatchError(f"{what}: neuron {idx[-1]} of layer {layer} exceeds this "
                                        f"model's intermediate size {size}.")
        warnings = []
        if not self.num_neurons:
            warnings.append(f"{what}: the mask holds NO neuron, so nothing is pruned or frozen with it; re-identify with a "
                            "looser selection (safeneuron_neuron_ratio, or lower thresholds).")
        if not mine.get("weight_hash"):
            return warnings + [f"{what}: the mask records no weight hash, so nothing checks that it was identified on "
                               "these weights (not, e.g., on another fine-tune of the architecture); re-create it with "
                               "`safeneuron identify` to have it checked."]
        same = same_weights(mine, fingerprint)
        if same is None:
            return warnings + [f"{what}: cannot check that the mask was identified on these weights: one of the two "
                               "models has quantized weights (e.g. a 4-bit QLoRA base), the other not."]
        if same:
            return warnings
        key = compared_hash(mine, fingerprint)
        msg = (f"{what}: the mask was identified on other weights of the same architecture ({key} "
               f"{mine.get(key)} in the mask, {fingerprint.get(key)} in this model), e.g. the base model of "
               "this fine-tune, or a checkpoint trained since (float32 and bfloat16 copies of one model hash "
               "alike, a float16 copy need not).")
        if not allow_other_weights:
            raise MaskMismatchError(
                msg + " Its neurons need not be this model's safety neurons: re-identify on this model "
                "(`safeneuron identify`, or unset safeneuron_mask to identify at the start of training), or "
                "pass --allow-other-weights / safeneuron_allow_other_weights: true if you mean to apply a mask "
                "identified on the base model to a fine-tune.")
        return warnings + [msg + " Applied anyway (allow_other_weights)."]

    # --- file ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, flag: str = "mask") -> Path:
        """Write atomically (:func:`~safeneuron_plugins.files.write_file`): a crash or a full disk never leaves
        half a mask, nor a temporary file beside it; errors name ``flag``.

        Refuses to replace a file that is not a SafeNeuron mask (e.g. a model's weights) or a directory.
        The file gets the usual permissions of a new file (0666 less the umask)."""
        from safetensors.torch import save as serialise

        path = Path(path)
        check_mask_destination(path, flag)
        _check_fingerprint(self.metadata.get("fingerprint"), f"NeuronMask.save({str(path)!r})")
        tensors = {}
        for name, sets in (("neurons", self.neurons), ("es", self.es), ("sas", self.sas)):
            for layer, idx in sets.items():
                tensors[f"{name}.{layer}"] = torch.tensor(idx, dtype=torch.int64)
        meta = dict(self.metadata)
        meta["format_version"] = FORMAT_VERSION
        data = serialise(tensors, metadata={"safeneuron": json.dumps(meta, sort_keys=True)})
        return write_file(path, data, flag, MASK, error=MaskFormatError)

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronMask:
        from safetensors import safe_open

        path = Path(path)
        where = f"safeneuron_mask: {str(path)!r}"
        if not path.is_file():
            raise MaskFormatError(f"safeneuron_mask: no mask file at {str(path)!r}; create one with "
                                  "`safeneuron identify MODEL --out PATH`.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise MaskFormatError(f"{where} is not a safetensors mask file ({exc}).") from exc
        if "safeneuron" not in header:
            raise MaskFormatError(f"{where} has no SafeNeuron metadata; it was not written by "
                                  "`safeneuron identify`.")
        try:
            meta = json.loads(header["safeneuron"])
        except json.JSONDecodeError as exc:
            raise MaskFormatError(f"{where}: its SafeNeuron metadata is not JSON ({exc}); re-create the mask.") from exc
        if not isinstance(meta, dict):
            raise MaskFormatError(f"{where}: its SafeNeuron metadata is {type(meta).__name__}, not a JSON object; "
                                  "re-create the mask.")
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise MaskFormatError(f"{where} has format version {version}; this library reads version "
                                  f"{FORMAT_VERSION}. Re-create the mask.")
        fp = _check_fingerprint(meta.get("fingerprint"), where)
        sets: dict[str, dict[int, list[int]]] = {"neurons": {}, "es": {}, "sas": {}}
        names: dict[tuple[str, int], str] = {}
        for key, tensor in tensors.items():
            name, _, layer = key.rpartition(".")
            if name not in sets or not (layer.isascii() and layer.isdigit()):
                raise MaskFormatError(f"{where}: tensor {key!r} is not one of neurons.LAYER, es.LAYER, sas.LAYER.")
            if (name, int(layer)) in names:
                raise MaskFormatError(f"{where}: tensors {names[name, int(layer)]!r} and {key!r} both name layer "
                                      f"{int(layer)}; a mask holds one {name} tensor per layer. Re-create the mask.")
            names[name, int(layer)] = key
            if tensor.dim() != 1 or tensor.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise MaskFormatError(f"{where}: tensor {key!r} must be a 1-D integer list of neuron indices, "
                                      f"got {tensor.dtype} of shape {list(tensor.shape)}.")
            idx = tensor.tolist()
            if int(layer) >= fp["num_layers"]:
                raise MaskFormatError(f"{where}: tensor {key!r} names layer {layer}, but its model has "
                                      f"{fp['num_layers']} layers.")
            size = fp["intermediate_size"]
            size = size[int(layer)] if isinstance(size, list) else size
            bad = [i for i in idx if not 0 <= i < size]
            if bad:
                raise MaskFormatError(f"{where}: tensor {key!r} holds neuron {bad[0]}, outside 0..{size - 1} "
                                      "(its model's intermediate size).")
            sets[name][int(layer)] = idx
        try:
            mask = cls(sets["neurons"], sets["es"], sets["sas"], meta)
        except MaskFormatError as exc:
            raise MaskFormatError(f"{where}: {str(exc).removeprefix('NeuronMask: ')}") from None
        mask.source = str(path)
        return mask


def _check_fingerprint(fp: Any, where: str) -> dict[str, Any]:
    """A mask's fingerprint must say how many layers and neurons its model has; without one it could
    never be checked against a model."""
    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    size = fp.get("intermediate_size") if isinstance(fp, dict) else None
    if not (isinstance(fp, dict) and whole(fp.get("num_layers"))
            and (whole(size) or isinstance(size, list) and len(size) == fp["num_layers"] and all(map(whole, size)))):
        raise MaskFormatError(
            f"{where}: the mask has no valid model fingerprint (metadata.fingerprint with num_layers and "
            "intermediate_size), so it cannot be checked against a model. Create masks with `safeneuron "
            "identify`, or give NeuronMask metadata={'fingerprint': fingerprint.fingerprint(model, layers)}.")
    return fp


def check_mask_destination(path: str | os.PathLike, flag: str = "mask") -> Path:
    """Raise :class:`MaskFormatError` when ``path`` cannot take a mask: a directory, or an existing file
    that is not a SafeNeuron mask (never overwrite a model's weights or anything else with a mask)."""
    return check_destination(path, flag, MASK, error=MaskFormatError)


def _normalise(sets: dict) -> dict[int, list[int]]:
    return {int(l): sorted({int(i) for i in idx}) for l, idx in sorted(sets.items(), key=lambda kv: int(kv[0]))}
