"""The refusal-direction file: a unit vector of the residual stream with the layer and position it was
taken at, as safetensors with JSON metadata (``safeneuron attack --family direction --save-direction``,
read back with ``--direction`` / ``--original``). The attack itself is :mod:`.attack_direction`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SafeNeuronError

FORMAT_VERSION = 1


_META_KEY = "safeneuron_direction"


class DirectionFileError(SafeNeuronError, ValueError):
    """A refusal-direction file is missing, unreadable, or does not fit the model."""


@dataclass
class RefusalDirection:
    """A unit vector in the residual stream, taken at the output of decoder layer ``layer`` and at
    ``position`` (a negative offset from the end of the templated prompt: -1 is its last token)."""

    vector: torch.Tensor
    layer: int
    position: int
    metadata: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors with the vector (float32) and JSON metadata (layer, position, format version, ...);
        written atomically, never over a file that is not a direction file."""
        from safetensors.torch import save as serialise

        from ..files import DIRECTION, write_file

        path = check_direction_destination(path)
        meta = {**self.metadata, "layer": self.layer, "position": self.position,
                "hidden_size": int(self.vector.numel()), "format_version": FORMAT_VERSION}
        data = serialise({"direction": self.vector.detach().float().cpu().contiguous()},
                         metadata={_META_KEY: json.dumps(meta, sort_keys=True)})
        return write_file(path, data, "--save-direction", DIRECTION)

    @classmethod
    def load(cls, path: str | os.PathLike, flag: str = "--direction") -> RefusalDirection:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DirectionFileError(f"{flag} {str(path)!r}: no such file; write one with --save-direction.")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
                vector = f.get_tensor("direction") if meta is not None else None
        except Exception as exc:
            raise DirectionFileError(f"{flag} {str(path)!r} is not a safetensors file ({exc}).") from None
        if meta is None or vector is None:
            raise DirectionFileError(f"{flag} {str(path)!r} is not a refusal-direction file (no "
                                     f"{_META_KEY!r} metadata); write one with --save-direction.")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DirectionFileError(f"{flag} {str(path)!r}: format version {meta.get('format_version')!r}, "
                                     f"this library reads {FORMAT_VERSION}.")
        try:
            layer, position = int(meta.pop("layer")), int(meta.pop("position"))
        except (KeyError, TypeError, ValueError):
            raise DirectionFileError(f"{flag} {str(path)!r}: the metadata has no integer layer and position.") from None
        meta.pop("format_version")
        vector = vector.float()
        if vector.dim() != 1 or not torch.isfinite(vector).all() or vector.norm() == 0:
            raise DirectionFileError(f"{flag} {str(path)!r}: the direction must be a finite non-zero vector.")
        return cls(vector / vector.norm(), layer, position, meta)


def is_direction_file(path: str | os.PathLike) -> bool:
    from ..files import has_metadata_key

    return has_metadata_key(path, _META_KEY)


def check_direction_destination(path: str | os.PathLike, flag: str = "--save-direction") -> Path:
    """Refuse a directory, or an existing file that is not a direction file (never overwrite weights)."""
    from ..files import DIRECTION, check_destination

    return check_destination(path, flag, DIRECTION)
