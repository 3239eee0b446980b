"""The refusal-direction attack (Arditi et al. 2024, "Refusal in language models is mediated by a single
direction"; README, "Other attack families").

1. Means: the residual stream (each decoder layer's output) at the post-instruction positions, the tokens
   the chat template puts after the user's message (ChatML: ``<|im_end|>\\n<|im_start|>assistant\\n``),
   averaged over harmful and over harmless prompts. A candidate direction is the difference of the two
   means at one (layer, position), normalised.
2. Selection: every candidate (a few layers x the chosen positions) is ablated in turn while the model
   answers validation harmful prompts (short greedy replies, judged); the candidate under which the
   model refuses least is the refusal direction (fewest refusals, then most compliance, then the first).
   Validation prompts are held out from the means and, in the CLI, from the evaluation prompts.
3. Ablation: forward hooks project the direction out of the residual stream at the embedding output and
   at every decoder layer's output, at every position, during generation; no weight changes. Arditi et al.
   also project it out of each attention and MLP output, i.e. also in the middle of a layer; here the
   residual stream between the attention and the MLP of one layer keeps what the attention wrote.

``cosine``: a model's direction against another's (e.g. the original model's, from its saved file) at
the same layer and position, to see whether training moved the direction or only hid it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import is_sharded
from ..errors import OptionsError, SafeNeuronError
from ..identification.activations import _StopForward
from ..identification.batching import input_device, length_batches, pad_batch, pad_id_of, tokenize
from ..identification.prompts import format_prompts
from ..quantization import unpacked_bnb_weights
from .direction_file import DirectionFileError, RefusalDirection
from .generation import generate
from .judges import Judge, default_judge
from .residual import ablated, hidden_state, residual_modules

_MARKER = "SAFENEURONINSTRUCTIONMARKER"
#: candidate layers by default, as fractions of the depth (Arditi et al. search the layers below 80%)
DEFAULT_LAYER_FRACTIONS = (0.25, 0.4, 0.55, 0.7)



# --- means and candidates ----------------------------------------------------------------------

def post_instruction_tokens(tokenizer, system_prompt: str | None = None) -> int:
    """How many tokens the chat template puts after the user's message (1 without a template: the last
    prompt token)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return 1
    text = format_prompts(tokenizer, [_MARKER], system_prompt)[0]
    suffix = text[text.rindex(_MARKER) + len(_MARKER):]
    return max(1, len(tokenizer(suffix, add_special_tokens=False)["input_ids"]))


@dataclass
class DirectionMeans:
    """Mean residual stream at the output of every decoder layer and the last ``positions`` prompt tokens:
    ``harmful`` and ``harmless`` are [layers, positions, hidden] (float64); position k is offset
    k - positions from the end."""

    harmful: torch.Tensor
    harmless: torch.Tensor
    n_harmful: int
    n_harmless: int

    @property
    def positions(self) -> int:
        return self.harmful.shape[1]

    def direction(self, layer: int, position: int) -> RefusalDirection:
        """The normalised difference of means at ``layer`` and ``position`` (-1 .. -positions)."""
        num_layers = self.harmful.shape[0]
        if not 0 <= layer < num_layers:
            raise OptionsError(f"layer {layer} is not a decoder layer of this model (0..{num_layers - 1}).")
        if not -self.positions <= position <= -1:
            raise OptionsError(f"position {position} is not a post-instruction position of this chat template "
                               f"(-1..-{self.positions}).")
        diff = (self.harmful[layer, position] - self.harmless[layer, position]).float()
        norm = float(diff.norm())
        if norm == 0 or not torch.isfinite(diff).all():
            raise SafeNeuronError(f"the harmful and harmless means are identical at layer {layer}, position "
                                  f"{position}: no direction to take there.")
        return RefusalDirection(diff / norm, layer, position,
                                {"norm": norm, "post_instruction_tokens": self.positions,
                                 "n_harmful": self.n_harmful, "n_harmless": self.n_harmless})


@torch.no_grad()
def _mean_residual(model: nn.Module, tokenizer, prompts: list[str], positions: int, *, system_prompt: str | None,
                   batch_size: int, max_length: int, mlp_modules: str | None, bar) -> torch.Tensor:
    _, blocks = residual_modules(model, mlp_modules)
    templated = getattr(tokenizer, "chat_template", None) is not None
    # cut from the left, with a warning: the end holds the post-instruction tokens
    seqs = tokenize(tokenizer, format_prompts(tokenizer, prompts, system_prompt), max_length, templated)
    total: torch.Tensor | None = None
    current: list[torch.Tensor | None] = [None] * len(blocks)
    index: list[torch.Tensor] = []
    # the pass ends after the last decoder layer: no final norm, no LM head over the vocabulary (as in
    # identification; sharded models run to the end, their post-forward hooks reshard)
    stop = not is_sharded(model)

    def record(i: int):
        def hook(mod, args, out):
            h = hidden_state(out)
            rows = torch.arange(h.shape[0], device=h.device).unsqueeze(1)
            current[i] = h[rows, index[0].to(h.device)].double().sum(0)  # [positions, hidden]
            if stop and i == len(blocks) - 1:
                raise _StopForward
        return hook

    handles = [b.register_forward_hook(record(i)) for i, b in enumerate(blocks)]
    device = input_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), unpacked_bnb_weights(model):
            for group in length_batches([len(s) for s in seqs], batch_size):
                ids, mask = pad_batch([seqs[i] for i in group], pad_id_of(tokenizer), device)
                lengths = torch.tensor([len(seqs[i]) for i in group])
                index[:] = [(lengths.unsqueeze(1) - positions + torch.arange(positions)).clamp_min(0)]
                try:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
                except _StopForward:
                    pass
                step = torch.stack([c.cpu() for c in current])
                total = step if total is None else total + step
                bar.update(len(group))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return total / len(seqs)


def direction_means(model: nn.Module, tokenizer, harmful: list[str], harmless: list[str], *,
                    system_prompt: str | None = None, batch_size: int = 16, max_length: int = 256,
                    mlp_modules: str | None = None, progress: bool = True) -> DirectionMeans:
    """Mean residual stream of harmful and of harmless prompts at every layer output and post-instruction
    position (one forward pass per batch, right padding, no generation)."""
    from tqdm.auto import tqdm

    if not harmful or not harmless:
        raise SafeNeuronError("direction_means needs at least one harmful and one harmless prompt.")
    positions = post_instruction_tokens(tokenizer, system_prompt)
    kw = dict(system_prompt=system_prompt, batch_size=batch_size, max_length=max_length, mlp_modules=mlp_modules)
    with tqdm(total=len(harmful) + len(harmless), desc="direction: mean activations", unit="prompt",
              disable=not progress, dynamic_ncols=True) as bar:
        return DirectionMeans(_mean_residual(model, tokenizer, harmful, positions, bar=bar, **kw),
                              _mean_residual(model, tokenizer, harmless, positions, bar=bar, **kw),
                              len(harmful), len(harmless))


def default_candidate_layers(num_layers: int) -> list[int]:
    """A few layers spread over the first 70% of the depth (:data:`DEFAULT_LAYER_FRACTIONS`)."""
    return sorted({min(num_layers - 1, int(f * num_layers)) for f in DEFAULT_LAYER_FRACTIONS})


def resolve_candidates(model: nn.Module, tokenizer, layers: Sequence[int] | str | None,
                       positions: Sequence[int] | str, *, system_prompt: str | None = None,
                       mlp_modules: str | None = None) -> tuple[list[int] | None, list[int]]:
    """Candidate layers (None: :func:`default_candidate_layers`, ``"all"``, or indices) and positions (``"all"``
    post-instruction positions, or negative offsets) checked against the model; errors name the CLI flags."""
    _, blocks = residual_modules(model, mlp_modules)
    num_layers, post = len(blocks), post_instruction_tokens(tokenizer, system_prompt)
    layers = list(range(num_layers)) if layers == "all" else None if layers is None else list(layers)
    positions = list(range(-post, 0)) if positions == "all" else list(positions)
    for layer in layers or []:
        if layer >= num_layers:
            raise OptionsError(f"--direction-layers: layer {layer} is not a decoder layer of this model "
                               f"(0..{num_layers - 1}).")
    for position in positions:
        if position < -post:
            raise OptionsError(f"--direction-positions: {position} is before the {post} post-instruction tokens "
                               f"of this chat template (-1..-{post}).")
    return layers, positions


def judged(model: nn.Module, tokenizer, prompts: list[str], judge: Judge, *, max_new_tokens: int,
           batch_size: int, system_prompt: str | None, desc: str, progress: bool) -> tuple[list[str], list]:
    """Greedy replies and their verdicts (whatever hooks are in force)."""
    replies = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       system_prompt=system_prompt, desc=desc, progress=progress)
    return replies, judge.judge(prompts, replies)


def select_direction(model: nn.Module, tokenizer, means: DirectionMeans, validation: list[str], *,
                     judge: Judge | None = None, layers: Sequence[int] | None = None,
                     positions: Sequence[int] = (-1,), max_new_tokens: int = 16, batch_size: int = 16,
                     system_prompt: str | None = None, mlp_modules: str | None = None,
                     progress: bool = True) -> tuple[RefusalDirection, list[dict[str, Any]]]:
    """Ablate each candidate (layer x position) while the model answers the ``validation`` harmful prompts;
    return the candidate with the lowest refusal rate (then the highest compliance rate, then the first)
    and every candidate's rates."""
    from .attack import rate_summary

    judge = judge or default_judge()
    if not validation:
        raise SafeNeuronError("select_direction needs validation harmful prompts.")
    layers = list(layers) if layers is not None else default_candidate_layers(means.harmful.shape[0])
    if not layers or not positions:
        raise OptionsError("select_direction: give at least one candidate layer and one position.")
    rows, best = [], None
    for layer in layers:
        for position in positions:
            candidate = means.direction(layer, position)
            with ablated(model, candidate, mlp_modules):
                _, verdicts = judged(model, tokenizer, validation, judge, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, system_prompt=system_prompt,
                                     desc=f"direction: validate layer {layer} position {position}", progress=progress)
            summary = rate_summary(verdicts)
            rows.append({"layer": layer, "position": position, "norm": candidate.metadata["norm"], **summary})
            key = (summary["refusal"], -summary["compliance"])
            if best is None or key < best[0]:
                best = (key, candidate)
    return best[1], rows


def cosine(a: RefusalDirection | torch.Tensor, b: RefusalDirection | torch.Tensor) -> float:
    va = (a.vector if isinstance(a, RefusalDirection) else a).float().flatten()
    vb = (b.vector if isinstance(b, RefusalDirection) else b).float().flatten()
    if va.numel() != vb.numel():
        raise DirectionFileError(f"cannot compare directions of {va.numel()} and {vb.numel()} dimensions "
                                 "(models of different sizes).")
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))


# --- the attack --------------------------------------------------------------------------------

CONDITIONS = ("ORI", "ABLATED")


def run_direction_attack(model: nn.Module, tokenizer, harmful: list[str], *,
                         direction_harmful: list[str] | None = None, direction_harmless: list[str] | None = None,
                         validation: list[str] | None = None, direction: RefusalDirection | None = None,
                         original: RefusalDirection | DirectionMeans | tuple[nn.Module, Any] | None = None,
                         judge: Judge | None = None, layers: Sequence[int] | None = None,
                         positions: Sequence[int] = (-1,), validation_tokens: int = 16, max_new_tokens: int = 64,
                         batch_size: int = 16, system_prompt: str | None = None, max_length: int = 256,
                         mlp_modules: str | None = None, progress: bool = True) -> dict[str, Any]:
    """ASR on ``harmful`` without (ORI) and with the refusal direction ablated (ABLATED).

    The direction is ``direction`` when given (e.g. loaded from a file), else the best candidate on
    ``validation`` (:func:`select_direction`) of the means over ``direction_harmful`` / ``direction_harmless``.
    ``original``: the original model's direction (a :class:`RefusalDirection`), its :class:`DirectionMeans`
    over the same prompts, or the original ``(model, tokenizer)``; ``results["direction"]["cosine_to_original"]``
    is then the cosine of this model's direction and the original's at the same layer and position (a
    direction's own layer and position; for means or a model, those of the direction ablated here). Returns the
    results with every generation (``generations``), as :func:`safeneuron_plugins.evaluate.attack.run_attack` does; the
    direction itself is ``results["_direction"]``."""
    from .attack import rate_summary
    from .significance import paired_difference

    judge = judge or default_judge()
    gen = dict(batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    means = None
    needs_means = direction is None or original is not None
    if needs_means:
        if not direction_harmful or not direction_harmless:
            raise SafeNeuronError("run_direction_attack: give direction_harmful and direction_harmless prompts "
                                  "(or a direction, without original).")
        means = direction_means(model, tokenizer, direction_harmful, direction_harmless, system_prompt=system_prompt,
                                batch_size=batch_size, max_length=max_length, mlp_modules=mlp_modules,
                                progress=progress)
    info: dict[str, Any] = {}
    if direction is None:
        direction, candidates = select_direction(model, tokenizer, means, validation or [], judge=judge,
                                                 layers=layers, positions=positions,
                                                 max_new_tokens=validation_tokens, mlp_modules=mlp_modules, **gen)
        info.update(source="selected on validation prompts", candidates=candidates,
                    n_validation=len(validation or []), validation_tokens=validation_tokens)
    else:
        info.update(source="given")
    info.update(layer=direction.layer, position=direction.position,
                **{k: direction.metadata[k] for k in ("norm", "post_instruction_tokens", "n_harmful", "n_harmless")
                   if k in direction.metadata})
    if original is not None:
        if isinstance(original, RefusalDirection):
            ref, at = original, (original.layer, original.position)
        else:
            at = (direction.layer, direction.position)
            other = original
            if not isinstance(other, DirectionMeans):
                other = direction_means(*original, direction_harmful, direction_harmless, system_prompt=system_prompt,
                                        batch_size=batch_size, max_length=max_length, mlp_modules=mlp_modules,
                                        progress=progress)
            ref = other.direction(*at)
        info["cosine_to_original"] = {"cosine": cosine(means.direction(*at), ref), "layer": at[0], "position": at[1]}
    results: dict[str, Any] = {"family": "direction", "judge": judge.name, "n_prompts": len(harmful),
                               "max_new_tokens": max_new_tokens, "asr": {}, "rates": {}, "direction": info,
                               "generations": []}
    wins = {}
    for name in CONDITIONS:
        with ablated(model, direction, mlp_modules) if name == "ABLATED" else contextlib.nullcontext():
            replies, verdicts = judged(model, tokenizer, harmful, judge, max_new_tokens=max_new_tokens,
                                       desc=f"attack {name}", **gen)
        for prompt, reply, v in zip(harmful, replies, verdicts):
            results["generations"].append({"condition": name, "prompt": prompt, "response": reply, "label": v.label,
                                           "success": v.success, "detail": v.detail})
        results["rates"][name] = rate_summary(verdicts)
        results["asr"][name] = results["rates"][name]["compliance"]
        wins[name] = [v.success for v in verdicts]
    results["vs_ori"] = paired_difference(wins["ABLATED"], wins["ORI"])
    results["_direction"] = direction
    return results
