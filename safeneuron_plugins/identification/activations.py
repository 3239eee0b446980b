"""Record pooled per-prompt neuron activations with forward hooks.

The forward pass stops right after the last hooked module (no later layers, no LM head, no
logits), runs under inference mode, and batches prompts by token length. Padding positions never
take part in pooling; in a batch of image prompts, neither do the image placeholder tokens (the batch
says which positions pool, see :mod:`safeneuron_plugins.identification.images`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..architectures import MLPLayer
from ..distributed import is_sharded
from ..quantization import unpacked_bnb_weights


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass early."""


def pool(acts: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """Pool [batch, tokens, neurons] activations over real tokens into [batch, neurons] (float32).

    Some models (OPT) run their MLP on the flattened [batch * tokens, neurons] hidden states."""
    if acts.dim() == 2 and acts.shape[0] == mask.numel():
        acts = acts.reshape(*mask.shape, acts.shape[-1])
    acts = acts.float()
    keep = mask.to(acts.device).bool().unsqueeze(-1)
    if pooling == "max":
        return acts.masked_fill(~keep, float("-inf")).amax(1)
    if pooling == "mean":
        return (acts * keep).sum(1) / keep.sum(1).clamp_min(1)
    if pooling == "last":
        # position of the last real token, for left or right padding alike
        flipped = keep.squeeze(-1).flip(1).float().argmax(1)
        last = keep.shape[1] - 1 - flipped
        return acts[torch.arange(acts.shape[0], device=acts.device), last]
    raise ValueError(f"pooling must be max, mean or last, got {pooling!r}")


def _signal_hook(layer: MLPLayer, signal: str, model: nn.Module,
                 sink: Callable[[int, torch.Tensor], None]):
    """Return (module, hook kind, hook fn) recording ``signal`` of one layer."""
    gate, up, down = layer.modules(model)
    size = layer.intermediate_size
    if signal == "product":
        return down, "pre", lambda mod, args: sink(layer.index, args[0])
    if layer.fused:
        part = slice(0, size) if signal == "gate" else slice(size, 2 * size)
        return up, "post", lambda mod, args, out: sink(layer.index, out[..., part])
    module = gate if (signal == "gate" and gate is not None) else up
    return module, "post", lambda mod, args, out: sink(layer.index, out)


@contextlib.contextmanager
def recording(model: nn.Module, layers: list[MLPLayer], signal: str,
              sink: Callable[[int, torch.Tensor], None], stop_after_last: bool = True) -> Iterator[None]:
    """Hooks calling ``sink(layer_index, activations)``; the last one stops the forward pass."""
    handles = []
    last = max(layers, key=lambda l: l.index).index if stop_after_last else None
    try:
        for layer in layers:
            module, kind, fn = _signal_hook(layer, signal, model, sink)
            if layer.index == last:
                fn = _then_stop(fn)
            if kind == "pre":
                handles.append(module.register_forward_pre_hook(fn))
            else:
                handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


def _then_stop(fn):
    def hook(*args):
        fn(*args)
        raise _StopForward
    return hook


def pooled_activations(model: nn.Module, layers: list[MLPLayer], batches: Iterator[tuple],
                       signal: str, pooling: str, consume: Callable[[list[int], dict[int, torch.Tensor]], None],
                       progress=None) -> None:
    """Run batches through the model; ``consume(indices, {layer: [batch, neurons] pooled})``.

    A batch is ``(indices, input_ids, attention_mask)`` (pooling over the attended tokens) or
    ``(indices, input_ids, attention_mask, extra_inputs, pool_mask)``: ``extra_inputs`` go to the
    forward pass too (pixel values, image grid sizes, ...) and pooling sees the positions of ``pool_mask``."""
    current: dict[int, torch.Tensor] = {}
    mask_box: list[torch.Tensor] = []

    def sink(layer_index: int, acts: torch.Tensor) -> None:
        current[layer_index] = pool(acts, mask_box[0], pooling)

    was_training = model.training
    model.eval()
    # FSDP2 and ZeRO-3 reuse unsharded parameter buffers across passes and reshard in post-forward
    # hooks: no inference tensors there, and no early stop (it would skip the last layers' reshard).
    sharded = is_sharded(model)
    grad_off = torch.no_grad() if sharded else torch.inference_mode()
    try:
        with grad_off, unpacked_bnb_weights(model), recording(model, layers, signal, sink,
                                                              stop_after_last=not sharded):
            for batch in batches:
                indices, ids, mask = batch[:3]
                extra, pool_mask = (batch[3], batch[4]) if len(batch) > 3 else ({}, mask)
                current.clear()
                mask_box[:] = [pool_mask]
                try:
                    model(input_ids=ids, attention_mask=mask, use_cache=False, **extra)
                except _StopForward:
                    pass
                missing = [l.index for l in layers if l.index not in current]
                if missing:
                    raise RuntimeError(f"no activations were recorded for layers {missing[:5]}; "
                                       "the model's forward pass skipped them.")
                consume(indices, current)
                if progress is not None:
                    progress.update(len(indices))
    finally:
        model.train(was_training)
