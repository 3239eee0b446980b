"""Identification: prompts -> pooled activations -> streamed statistics -> scores -> NeuronMask."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..architectures import MLPLayer, find_mlp_layers
from ..distributed import is_sharded, rank_and_world
from ..errors import OptionsError, PromptSourceError
from ..fingerprint import fingerprint
from ..mask import NeuronMask
from ..options import SafeNeuronOptions
from ..version import __version__
from .activations import pooled_activations
from .attribution import attribution_scores
from .batching import input_device, length_batches, pad_batch, pad_id_of, tokenize
from .images import POOL_IMAGE_TOKENS, check_image_prompts, format_multimodal, image_token_id, multimodal_batches
from .prompts import Prompt, format_prompts, load_prompts, prompts_hash
from .scoring import activation_shift, effect_size, neurostrike_probe, select, top_fraction
from .stats import RunningStats

logger = logging.getLogger("safeneuron")

#: safeneuron_method `attribution` keeps this share of all MLP neurons when safeneuron_neuron_ratio is unset.
ATTRIBUTION_RATIO = 0.01


def _progress(total: int, desc: str, disable: bool | None):
    from tqdm.auto import tqdm

    rank, _ = rank_and_world()
    return tqdm(total=total, desc=desc, unit="prompt", disable=bool(disable) or rank != 0,
                dynamic_ncols=True)


def _batches(tokenizer, texts: list[str], batch_size: int, max_length: int, templated: bool,
             device, shard: tuple[int, int], vision: dict | None = None):
    if vision is not None:  # image prompts: the processor encodes, image placeholders are not pooled
        return multimodal_batches(vision["processor"], texts, vision["images"], batch_size, device, shard,
                                  pad_id_of(tokenizer), vision["image_token"], vision["pool_image_tokens"],
                                  vision.get("dtype"))
    return _text_batches(tokenizer, texts, batch_size, max_length, templated, device, shard)


def _text_batches(tokenizer, texts, batch_size, max_length, templated, device, shard):
    seqs = tokenize(tokenizer, texts, max_length, templated)
    rank, world = shard
    mine = list(range(rank, len(seqs), world))
    pad = pad_id_of(tokenizer)
    for group in length_batches([len(seqs[i]) for i in mine], batch_size):
        idx = [mine[i] for i in group]
        ids, mask = pad_batch([seqs[i] for i in idx], pad, device)
        yield idx, ids, mask


def collect_statistics(model: nn.Module, tokenizer, layers: list[MLPLayer], texts: list[str], *,
                       signal: str = "product", pooling: str = "max", batch_size: int = 16,
                       max_length: int = 256, templated: bool = True, desc: str = "activations",
                       progress: bool | None = None, vision: dict | None = None) -> dict[int, RunningStats]:
    """Per-layer running statistics of pooled activations over ``texts``.

    ``vision``: the texts were formatted by a processor and carry images; a dict from :func:`vision_inputs`
    (pooling then skips the image placeholder tokens unless it says otherwise). Under torch.distributed
    the prompts are sharded across ranks and the statistics merged, so
    every rank returns the statistics of all prompts."""
    stats = {l.index: RunningStats.empty(l.intermediate_size) for l in layers}

    def consume(indices, pooled):
        for layer, values in pooled.items():
            stats[layer].update(values.to("cpu"))

    # replicated parameters (DDP): each rank takes a share of the prompts, then the statistics merge;
    # sharded ones (FSDP2, ZeRO-3): every rank must run the same forward passes, so all take all
    shard = (0, 1) if is_sharded(model) else rank_and_world()
    bar = _progress(len(range(shard[0], len(texts), shard[1])), desc, None if progress else True)
    with bar:
        pooled_activations(model, layers, _batches(tokenizer, texts, batch_size, max_length, templated,
                                                    input_device(model), shard, vision),
                           signal, pooling, consume, progress=bar)
    if shard[1] > 1:
        for s in stats.values():
            s.all_reduce_()
    return stats


def collect_matrix(model: nn.Module, tokenizer, layers: list[MLPLayer], texts: list[str], *,
                   signal: str, pooling: str, batch_size: int, max_length: int, templated: bool,
                   desc: str, progress: bool | None = None, vision: dict | None = None) -> dict[int, torch.Tensor]:
    """Per-layer [prompts, neurons] pooled activations (the NeuroStrike probe needs them all)."""
    rows: dict[int, list[tuple[int, torch.Tensor]]] = {l.index: [] for l in layers}

    def consume(indices, pooled):
        for layer, values in pooled.items():
            rows[layer].extend(zip(indices, values.to("cpu").clone()))

    bar = _progress(len(texts), desc, None if progress else True)
    with bar:
        pooled_activations(model, layers, _batches(tokenizer, texts, batch_size, max_length, templated,
                                                    input_device(model), (0, 1), vision),
                           signal, pooling, consume, progress=bar)
    return {l: torch.stack([v for _, v in sorted(r, key=lambda t: t[0])]) for l, r in rows.items()}


def _texts(tokenizer, prompts: list[Prompt], system_prompt: str | None) -> tuple[list[str], bool]:
    templated = getattr(tokenizer, "chat_template", None) is not None
    return format_prompts(tokenizer, [p.text for p in prompts], system_prompt), templated


def vision_inputs(model: nn.Module, processor, prompts: list[Prompt], *,
                  pool_image_tokens: bool = POOL_IMAGE_TOKENS) -> dict:
    """What :func:`collect_statistics` needs for prompts formatted by ``processor`` (:func:`format_multimodal`)."""
    return {"processor": processor, "images": [p.image for p in prompts], "image_token": image_token_id(model),
            "pool_image_tokens": pool_image_tokens, "dtype": next(model.parameters()).dtype}


def _prompt_list(items: list, option: str) -> list[Prompt]:
    """The non-empty prompts of a list (or any iterable, e.g. a generator, read once) of strings or
    :class:`Prompt` objects; anything else (None, a number) is an error, never its str()."""
    out = []
    for i, item in enumerate(items):
        text = item.text if isinstance(item, Prompt) else item
        if not isinstance(text, str):
            raise PromptSourceError(f"{option}: item {i} of the prompt list is {type(text).__name__} {text!r:.40}, not "
                                    "a string; give prompt strings (or Prompt objects).")
        if text.strip():
            out.append(item if isinstance(item, Prompt) else Prompt(item))
    return out


def _check_model_and_tokenizer(model, tokenizer, method: str) -> None:
    """Clear errors, before any work, for what would otherwise fail deep inside a forward pass."""
    if not isinstance(model, nn.Module):
        raise OptionsError(f"identify(): model is {type(model).__name__}, not a torch module; load it with "
                           "transformers (AutoModelForCausalLM.from_pretrained) or safeneuron_plugins.models.load_model.")
    if tokenizer is None or not callable(tokenizer):
        raise OptionsError(f"identify(): tokenizer is {type(tokenizer).__name__}; pass the model's tokenizer "
                           "(AutoTokenizer.from_pretrained(MODEL)), which formats and encodes the prompts.")
    if any(p.is_meta for p in model.parameters()) and not any(hasattr(m, "_hf_hook") for m in model.modules()):
        raise OptionsError("identify(): the model's weights are on the meta device (a model built without its weights, "
                           "e.g. under init_empty_weights or from a config): there are no activations to measure. Load "
                           "the weights first (from_pretrained).")
    if method == "attribution" and hasattr(model, "get_output_embeddings"):  # a transformers model
        if model.get_output_embeddings() is None:
            raise OptionsError(
                f"safeneuron_method `attribution` scores neurons by the log-probability of safeneuron_refusal_text, "
                f"which needs a language-model head; {type(model).__name__} has none (a base model without its LM head, "
                "or a sequence-classification model). Load the model with AutoModelForCausalLM, or set "
                "safeneuron_method: safeneuron (activation statistics, no LM head needed).")


def identify(model: nn.Module, tokenizer, harmful: str | list[str] | None = None,
             harmless: str | list[str] | None = None, *, options: SafeNeuronOptions | None = None,
             progress: bool = True, processor=None, pool_image_tokens: bool = POOL_IMAGE_TOKENS,
             **overrides: Any) -> NeuronMask:
    """Identify the safety neurons of ``model``.

    ``harmful`` / ``harmless`` are prompt sources (see :mod:`safeneuron_plugins.identification.prompts`) or lists
    of prompt strings; unset, the options' sources are used (default: the built-in set). Other
    options are the identification fields of :class:`SafeNeuronOptions`
    without their ``safeneuron_`` prefix (``tau_es=2.0``, ``signal="up"``, ...) or an ``options``
    object. Returns a :class:`NeuronMask` carrying the model fingerprint and how it was made.

    Vision-language models: prompts of a source may carry images (an ``image`` column, or
    :class:`Prompt` objects with ``image``); then ``processor`` (the model's) formats every prompt of both
    sets with its chat template and pooling skips the image placeholder tokens (``pool_image_tokens``
    pools them too; see :mod:`safeneuron_plugins.identification.images`). Text-only sources work as for any model.
    """
    opts = options or SafeNeuronOptions()
    unknown = [k for k in overrides if f"safeneuron_{k}" not in opts.to_dict()]
    if unknown:
        raise OptionsError(f"identify() got unknown option(s) {unknown}; options are "
                           f"{sorted(opts.identify_kwargs())}.")
    if overrides:
        opts = SafeNeuronOptions(**{**opts.to_dict(), **{f"safeneuron_{k}": v for k, v in overrides.items()}})
    o = opts.identify_kwargs()
    if harmful is not None:
        o["harmful"] = harmful
    if harmless is not None:
        o["harmless"] = harmless

    _check_model_and_tokenizer(model, tokenizer, o["method"])
    layers = find_mlp_layers(model, o["mlp_modules"])
    sets = {}
    for kind in ("harmful", "harmless"):
        src = o[kind]
        if not isinstance(src, (str, bytes, Mapping)) and isinstance(src, Iterable):
            prompts = _prompt_list(list(src), f"safeneuron_{kind}")[: o["max_prompts"] or None]
            if not prompts:
                raise PromptSourceError(f"safeneuron_{kind}: the prompt list is empty.")
        else:
            prompts = load_prompts(src, kind=kind, max_prompts=o["max_prompts"], option=f"safeneuron_{kind}")
        sets[kind] = prompts
    if len(sets["harmful"]) + len(sets["harmless"]) < 3 or min(len(v) for v in sets.values()) < 1:
        raise PromptSourceError("identification needs at least 1 harmful and 1 harmless prompt and 3 in "
                                "total; statistics over fewer are meaningless (use >= 64 of each).")
    for kind in ("harmful", "harmless"):
        check_image_prompts(model, processor, f"safeneuron_{kind}", sum(p.image is not None for p in sets[kind]))
    vision = {kind: None for kind in sets}
    if any(p.image is not None for v in sets.values() for p in v):
        if o["method"] == "attribution":
            raise OptionsError("safeneuron_method `attribution` does not take image prompts; use `safeneuron` or "
                               "`neurostrike`, or text-only prompt sources.")
        texts_u, texts_s = (format_multimodal(processor, sets[k], o["system_prompt"]) for k in ("harmful", "harmless"))
        templated = True
        vision = {k: vision_inputs(model, processor, sets[k], pool_image_tokens=pool_image_tokens) for k in sets}
    else:
        texts_u, templated = _texts(tokenizer, sets["harmful"], o["system_prompt"])
        texts_s, _ = _texts(tokenizer, sets["harmless"], o["system_prompt"])
    common = dict(signal=o["signal"], pooling=o["pooling"], batch_size=o["batch_size"],
                  max_length=o["max_length"], templated=templated, progress=progress)
    start = time.perf_counter()
    meta: dict[str, Any] = {}
    if o["method"] == "neurostrike":
        x_u = collect_matrix(model, tokenizer, layers, texts_u, desc="harmful prompts", vision=vision["harmful"],
                             **common)
        x_s = collect_matrix(model, tokenizer, layers, texts_s, desc="harmless prompts", vision=vision["harmless"],
                             **common)
        feats = {l: torch.cat([x_u[l], x_s[l]]) for l in x_u}
        labels = torch.cat([torch.ones(len(texts_u)), torch.zeros(len(texts_s))])
        bar = _progress(o["probe_epochs"] * len(layers), "probe epochs x layers", not progress)
        with bar:
            chosen = neurostrike_probe(feats, labels, epochs=o["probe_epochs"], z=o["probe_z"],
                                       progress=bar)
        mask = NeuronMask(chosen)
        meta.update(probe_epochs=o["probe_epochs"], probe_z=o["probe_z"])
    elif o["method"] == "attribution":
        if is_sharded(model):
            raise OptionsError("safeneuron_method `attribution` needs a backward pass through the whole model and "
                               "does not run on a sharded (FSDP2 / ZeRO-3) model; identify before sharding and pass "
                               "safeneuron_mask, or use safeneuron_method `safeneuron`.")
        rank, world = rank_and_world()
        mine = texts_u[rank::world]
        bar = _progress(len(mine), "harmful prompts (attribution)", not progress)
        with bar:
            scores = attribution_scores(model, tokenizer, layers, mine, refusal=o["refusal_text"],
                                        batch_size=o["batch_size"], max_length=o["max_length"],
                                        templated=templated, progress=bar, average=False)
        if world > 1:  # each rank summed its share of the prompts; the sum over ranks is the same on all
            import torch.distributed as dist

            for layer in sorted(scores):
                dist.all_reduce(scores[layer])
        scores = {l: v / len(texts_u) for l, v in scores.items()}
        ratio = o["neuron_ratio"] if o["neuron_ratio"] is not None else ATTRIBUTION_RATIO
        # only neurons whose activation supports the refusal (positive score) can be selected
        chosen = top_fraction(scores, ratio, o["ratio_scope"], among={l: v > 0 for l, v in scores.items()})
        mask = NeuronMask(chosen)
        meta.update(neuron_ratio=ratio, ratio_scope=o["ratio_scope"], refusal_text=o["refusal_text"],
                    signal="product", pooling="sum")
    else:
        s_u = collect_statistics(model, tokenizer, layers, texts_u, desc="harmful prompts",
                                 vision=vision["harmful"], **common)
        s_s = collect_statistics(model, tokenizer, layers, texts_s, desc="harmless prompts",
                                 vision=vision["harmless"], **common)
        d = {l: effect_size(s_u[l], s_s[l]) for l in s_u}
        delta = {l: activation_shift(s_u[l], s_s[l]) for l in s_u}
        sel = select(d, delta, tau_es=o["tau_es"], tau_sas=o["tau_sas"], selection=o["selection"],
                     neuron_ratio=o["neuron_ratio"], ratio_scope=o["ratio_scope"],
                     ratio_mode=o["ratio_mode"])
        mask = NeuronMask(sel.neurons, sel.es, sel.sas)
        meta.update(tau_es=o["tau_es"], tau_sas=o["tau_sas"], selection=o["selection"],
                    neuron_ratio=o["neuron_ratio"], ratio_scope=o["ratio_scope"],
                    ratio_mode=o["ratio_mode"])
    elapsed = time.perf_counter() - start
    for layer in layers:
        mask.neurons.setdefault(layer.index, [])
    mask.neurons = dict(sorted(mask.neurons.items()))
    mask.metadata = {
        "fingerprint": fingerprint(model, layers), "method": o["method"], "signal": o["signal"],
        "pooling": o["pooling"], "system_prompt": o["system_prompt"], "max_length": o["max_length"],
        "n_harmful": len(texts_u), "n_harmless": len(texts_s),
        "prompts_hash": prompts_hash(texts_u, texts_s, *[[str(p.image) for p in sets[k] if p.image is not None]
                                                         for k in ("harmful", "harmless") if vision[k]]),
        "harmful_source": o["harmful"] if isinstance(o["harmful"], str) else "list",
        "harmless_source": o["harmless"] if isinstance(o["harmless"], str) else "list",
        "library_version": __version__, "seconds": round(elapsed, 3), "rounds": 1, **meta,
    }
    if vision["harmful"] or vision["harmless"]:
        mask.metadata["image_prompts"] = {k: sum(p.image is not None for p in sets[k]) for k in sets}
        mask.metadata["pooled_tokens"] = ("text and image placeholder tokens" if pool_image_tokens else
                                          "text tokens (image placeholder tokens excluded)")
    logger.info("identified %d safety neurons in %.1fs", mask.num_neurons, elapsed)
    if not mask.num_neurons:
        logger.warning("identification selected NO safety neuron (safeneuron_method %s%s): a mask of it prunes and "
                       "freezes nothing. Loosen the selection (safeneuron_neuron_ratio, or lower safeneuron_tau_es / "
                       "safeneuron_tau_sas), or give more prompts.", o["method"],
                       f", tau_es {o['tau_es']}, tau_sas {o['tau_sas']}" if o["method"] == "safeneuron" else "")
    return mask
