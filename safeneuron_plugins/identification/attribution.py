"""A causal score for safety neurons: attribution of a refusal to each neuron's activation.

Activation statistics (effect size, activation shift) find neurons that *differ* between harmful
and harmless prompts; nothing says the model uses them to refuse. Attribution asks the causal
question to first order: for a harmful prompt x followed by a refusal r, how much would the
log-probability of r fall if neuron j were switched off? Zeroing the neuron's activation a_j
(the input of down_proj, the quantity the pruning attack and forward pruning zero) changes
log p(r | x) by about

    -sum_t a_j(t) * d log p(r | x) / d a_j(t)        (t over every position of x and r)

so ``score_j = mean over harmful prompts of sum_t a_j(t) * g_j(t)`` is the refusal that neuron j
carries (positive: it supports refusing). This is the activation x gradient ("attribution
patching", SNIP-style) score that Wei et al. 2024 use for safety-critical weights, taken per neuron.
One forward and one backward pass per batch; no parameter gradients are stored.

The refusal continuation defaults to a generic one; ``refusal`` may name the model's own opening.
"""

from __future__ import annotations

import torch
from torch import nn

from ..architectures import MLPLayer
from .batching import input_device, length_batches, pad_batch, pad_id_of, tokenize

DEFAULT_REFUSAL = "I'm sorry, but I can't help with that."


def _down_inputs(model: nn.Module, layers: list[MLPLayer], box: dict[int, torch.Tensor]):
    """Pre-hooks on each down projection keeping its input (the neurons' activations) in ``box``."""
    handles = []
    for layer in layers:
        down = model.get_submodule(layer.down)

        def hook(module, args, index=layer.index):
            box[index] = args[0]

        handles.append(down.register_forward_pre_hook(hook))
    # the graph must reach every activation even when no parameter requires grad (a frozen
    # model): start it at the embeddings, so later neurons' paths through earlier ones all count
    emb = model.get_input_embeddings()
    handles.append(emb.register_forward_hook(lambda mod, args, out: out.requires_grad_(True)))
    return handles


def _logits_to_keep_kw(model: nn.Module, n: int) -> dict:
    """``logits_to_keep=n`` where the model's forward takes it (recent transformers causal LMs)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"logits_to_keep": n} if "logits_to_keep" in params else {}


def attribution_scores(model: nn.Module, tokenizer, layers: list[MLPLayer], texts: list[str], *,
                       refusal: str = DEFAULT_REFUSAL, batch_size: int = 8, max_length: int = 256,
                       templated: bool = True, progress=None, average: bool = True) -> dict[int, torch.Tensor]:
    """Per layer, the mean (``average``; else the sum) over ``texts`` (chat-formatted harmful prompts) of sum_t a_j(t) g_j(t).

    ``g`` is the gradient of the summed log-probability of the ``refusal`` tokens that follow each
    prompt. Prompts are left-padded with position ids counted from the first real token; padding
    positions carry no loss and their activations are masked out of the score."""
    device = input_device(model)
    prompt_ids = tokenize(tokenizer, texts, max_length, templated)  # cut from the left, with a warning
    target = tokenizer(refusal, add_special_tokens=False)["input_ids"]
    if not target:
        raise ValueError("the refusal continuation tokenizes to nothing; give a non-empty text.")
    seqs = [list(p) + list(target) for p in prompt_ids]
    pad = pad_id_of(tokenizer)
    totals = {l.index: torch.zeros(l.intermediate_size, dtype=torch.float64) for l in layers}
    was_training = model.training
    model.eval()
    box: dict[int, torch.Tensor] = {}
    handles = _down_inputs(model, layers, box)
    n_t = len(target)
    keep_kw = _logits_to_keep_kw(model, n_t + 1)
    try:
        for group in length_batches([len(s) for s in seqs], batch_size):
            # left padding: every refusal ends in the last column, so only its n_t + 1 logit rows are
            # computed (the LM head over a large vocabulary is a big share of a small model's cost)
            ids, attn = pad_batch([seqs[i] for i in group], pad, side="left")
            positions = (attn.cumsum(1) - 1).clamp_min(0)
            ids, attn, positions = ids.to(device), attn.to(device), positions.to(device)
            box.clear()
            with torch.enable_grad():
                logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False,
                               **keep_kw).logits[:, -(n_t + 1):-1]
                logp = torch.log_softmax(logits.float(), -1)
                tgt = torch.tensor(target, device=device).expand(len(group), -1)
                loss = logp.gather(-1, tgt.unsqueeze(-1)).sum()
                acts = [box[l.index] for l in layers]
                grads = torch.autograd.grad(loss, acts)
            keep = attn.unsqueeze(-1).to(acts[0].dtype)
            for layer, a, g in zip(layers, acts, grads):
                contrib = (a.detach() * g * keep).sum(1)          # [batch, neurons]
                totals[layer.index] += contrib.sum(0).double().cpu()
            del logits, logp, acts, grads
            if progress is not None:
                progress.update(len(group))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {l: t / max(len(texts), 1) for l, t in totals.items()} if average else totals
