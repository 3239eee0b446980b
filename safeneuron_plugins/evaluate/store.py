"""What an evaluation has made so far, kept on disk so that an evaluation cut off resumes where it stopped.

Evaluating one 1.5B model on a 2-core CPU (every attack condition, three attackers' identification, the
random control, over-refusal) takes longer than one sitting. An :class:`EvaluationStore` keeps each
generation pass's replies and each attacker's mask in a directory, under a hash of everything they depend
on: the model (its fingerprint: structure and a sample of every MLP layer's weights, and its dtype), the
prompts, the pruned neurons or the identification options, and the generation settings. A later
evaluation of the same model finds them and generates only what is missing; replies are judged again each
time (judging is cheap, and a changed judge then applies to them). Files are written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from ..architectures import find_mlp_layers
from ..files import GENERATIONS, json_lines, read_json_objects, write_file
from ..fingerprint import fingerprint
from ..mask import NeuronMask


class EvaluationStore:
    """Replies and masks of one model's evaluation in ``directory`` (see the module docstring)."""

    def __init__(self, directory: str | Path, model: nn.Module, mlp_modules: str | None = None):
        self.directory = Path(directory)
        dtype = str(next(model.parameters()).dtype)
        self.model_id = {"fingerprint": fingerprint(model, find_mlp_layers(model, mlp_modules)), "dtype": dtype}
        self.reused = 0

    def _path(self, kind: str, what: dict[str, Any], suffix: str) -> Path:
        text = json.dumps({"model": self.model_id, **what}, sort_keys=True, default=str)
        return self.directory / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}{suffix}"

    def replies(self, what: dict[str, Any], prompts: list[str], make: Callable[[], list[str]]) -> list[str]:
        """The replies to ``prompts`` made under ``what`` (pruned neurons, generation settings): read from the
        store when an earlier evaluation made them, else ``make()`` and kept."""
        path = self._path("replies", {**what, "prompts": prompts}, ".jsonl")
        if path.is_file():
            rows = [row for _, row in read_json_objects(path, f"evaluation store {path}")]
            if [r.get("prompt") for r in rows] == prompts:
                self.reused += 1
                return [r["response"] for r in rows]
        replies = make()
        self.directory.mkdir(parents=True, exist_ok=True)
        write_file(path, json_lines({"prompt": p, "response": r} for p, r in zip(prompts, replies)),
                   "--output-dir", GENERATIONS)
        return replies

    def mask(self, what: dict[str, Any], make: Callable[[], NeuronMask]) -> NeuronMask:
        """The mask identified under ``what`` (identification options and prompts): from the store, else
        ``make()`` and kept."""
        path = self._path("mask", what, ".safetensors")
        if path.is_file():
            self.reused += 1
            return NeuronMask.load(path)
        mask = make()
        self.directory.mkdir(parents=True, exist_ok=True)
        mask.save(path, flag="--output-dir")
        return mask
