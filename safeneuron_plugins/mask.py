"""The safety-neuron mask: per-layer neuron indices plus metadata, stored as safetensors."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MaskFormatError, MaskMismatchError

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

    def __post_init__(self) -> None:
        self.neurons = _normalise(self.neurons)
        self.es = _normalise(self.es)
        self.sas = _normalise(self.sas)

    # --- counts --------------------------------------------------------------------------
    @property
    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    @property
    def fingerprint(self) -> dict[str, Any]:
        return self.metadata.get("fingerprint", {})

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
                         strict_weights: bool = False) -> list[str]:
        """Raise :class:`MaskMismatchError` when the mask's model differs in structure from
        ``fingerprint``; return warnings (weights differ: e.g. a fine-tuned copy of the model)."""
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
        if mine.get("weight_hash") and mine.get("weight_hash") != fingerprint.get("weight_hash"):
            msg = (f"{what}: the mask was identified on different weights of the same architecture "
                   f"(weight_hash {mine['weight_hash']} vs {fingerprint.get('weight_hash')}), e.g. the "
                   "base model of a fine-tune.")
            if strict_weights:
                raise MaskMismatchError(msg + " Re-identify on this model.")
            warnings.append(msg)
        return warnings

    # --- file ----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary file + rename): a crash never leaves half a mask."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, sets in (("neurons", self.neurons), ("es", self.es), ("sas", self.sas)):
            for layer, idx in sets.items():
                tensors[f"{name}.{layer}"] = torch.tensor(idx, dtype=torch.int64)
        meta = dict(self.metadata)
        meta["format_version"] = FORMAT_VERSION
        header = {"safeneuron": json.dumps(meta, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=header)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> NeuronMask:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MaskFormatError(f"safeneuron_mask: no mask file at {str(path)!r}; create one with "
                                  "`safeneuron identify MODEL --out PATH`.")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise MaskFormatError(f"safeneuron_mask: {str(path)!r} is not a safetensors mask file "
                                  f"({exc}).") from exc
        if "safeneuron" not in header:
            raise MaskFormatError(f"safeneuron_mask: {str(path)!r} has no SafeNeuron metadata; "
                                  "it was not written by `safeneuron identify`.")
        meta = json.loads(header["safeneuron"])
        version = meta.get("format_version")
        if version != FORMAT_VERSION:
            raise MaskFormatError(f"safeneuron_mask: {str(path)!r} has format version {version}; "
                                  f"this library reads version {FORMAT_VERSION}. Re-create the mask.")
        sets: dict[str, dict[int, list[int]]] = {"neurons": {}, "es": {}, "sas": {}}
        for key, tensor in tensors.items():
            name, layer = key.rsplit(".", 1)
            sets[name][int(layer)] = tensor.tolist()
        return cls(sets["neurons"], sets["es"], sets["sas"], meta)


def _normalise(sets: dict) -> dict[int, list[int]]:
    return {int(l): sorted({int(i) for i in idx}) for l, idx in sorted(sets.items(), key=lambda kv: int(kv[0]))}
