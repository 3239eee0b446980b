"""The residual stream of a language model: where it is (the embedding output and every decoder layer's
output) and :func:`ablated`, which projects a direction out of it during forward passes (the
refusal-direction attack of :mod:`.attack_direction`; no weight changes)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..architectures import find_mlp_layers
from .direction_file import DirectionFileError, RefusalDirection


def residual_modules(model: nn.Module, mlp_modules: str | None = None) -> tuple[nn.Module, list[nn.Module]]:
    """The embedding and every decoder layer (in order) of the language model: their outputs are the
    residual stream. ``mlp_modules``: the ``safeneuron_mlp_modules`` spec of an architecture not
    recognised automatically (its LAYERS_PATH names the decoder layers)."""
    blocks = [model.get_submodule(layer.block) for layer in find_mlp_layers(model, mlp_modules)]
    return model.get_input_embeddings(), blocks



def hidden_state(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"a decoder layer returned {type(out).__name__}; expected a tensor or a tuple starting with one")



def _replace_hidden(out, hidden: torch.Tensor):
    return hidden if isinstance(out, torch.Tensor) else (hidden,) + tuple(out[1:])



def project_out(hidden: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """``hidden - (hidden . d) d`` for a unit vector ``d`` (computed in float32, returned in hidden's dtype)."""
    d = direction.to(hidden.device, torch.float32)
    h = hidden.float()
    return (h - (h @ d).unsqueeze(-1) * d).to(hidden.dtype)



@contextlib.contextmanager
def ablated(model: nn.Module, direction: torch.Tensor | RefusalDirection,
            mlp_modules: str | None = None) -> Iterator[None]:
    """Project ``direction`` out of the residual stream (embedding output and every decoder layer's
    output, every position) while in the block; the hooks are removed on exit."""
    vector = direction.vector if isinstance(direction, RefusalDirection) else direction
    vector = vector.detach().float().flatten()
    vector = vector / vector.norm()
    embedding, blocks = residual_modules(model, mlp_modules)
    width = getattr(embedding, "embedding_dim", None) or embedding.weight.shape[-1]
    if vector.numel() != width:
        raise DirectionFileError(f"the direction has {vector.numel()} dimensions but the model's residual stream "
                                 f"has {width}; it was taken on a model of another size.")
    hook = lambda mod, args, out: _replace_hidden(out, project_out(hidden_state(out), vector))
    handles = [m.register_forward_hook(hook) for m in [embedding, *blocks]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
