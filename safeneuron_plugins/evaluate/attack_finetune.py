"""The harmful fine-tuning attack (docs/evaluate.md, "Other attack families").

An attacker fine-tunes the released model on a few harmful prompt/response pairs with LoRA and checks
how many optimizer steps it takes to break its refusals: the attack success rate after k steps for
each k of a list (a steps-to-break curve), judged and with intervals as the pruning attack's.

The adapter is applied in memory only: the model's own weights never change (they are frozen while the
adapter trains, and the adapter is removed afterwards without merging), so the model on disk and the
object passed in are the same before and after. k = 0 is the untouched model, evaluated before any
adapter exists.

The attacker does not respect a SafeNeuron mask: a released model's freezing is the defender's training
recipe, not a property of the weights. ``respect_mask`` runs the other case (the adapter's rows for the
mask's neurons kept at zero, as :class:`safeneuron_plugins.freeze.NeuronFreezer` does in training), to
see how much of the defence is the frozen neurons themselves.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import OptionsError, SafeNeuronError
from ..identification.batching import input_device, pad_batch, pad_id_of, tokenize
from ..identification.prompts import format_prompts
from ..mask import NeuronMask
from .judges import Judge, default_judge

DEFAULT_STEPS = (0, 5, 10, 20)


def check_steps(steps: Sequence[int], option: str = "steps") -> list[int]:
    """``steps`` sorted: distinct non-negative whole numbers, at least one."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise OptionsError(f"{option}={steps!r}: give a list of step counts such as 0,5,10,20.")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in steps):
        raise OptionsError(f"{option}={list(steps)!r}: step counts must be whole numbers >= 0, e.g. 0,5,10,20.")
    if len(set(steps)) != len(steps):
        raise OptionsError(f"{option}={list(steps)!r}: a step count appears twice.")
    return sorted(steps)


def training_examples(tokenizer, pairs: Sequence[Mapping[str, str]], *, system_prompt: str | None = None,
                      max_length: int = 256) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per pair: the chat-formatted prompt (label -100: not learned) followed by the
    response and the end-of-sequence token, cut to ``max_length`` tokens."""
    if not pairs:
        raise SafeNeuronError("the fine-tuning attack needs at least one prompt/response pair.")
    templated = getattr(tokenizer, "chat_template", None) is not None
    prompts = tokenize(tokenizer, format_prompts(tokenizer, [p["prompt"] for p in pairs], system_prompt),
                       10 ** 9, templated)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out = []
    for n, (pair, ids) in enumerate(zip(pairs, prompts)):
        reply = list(tokenizer(pair["response"], add_special_tokens=False)["input_ids"]) + eos
        seq, labels = (ids + reply)[:max_length], ([-100] * len(ids) + reply)[:max_length]
        if all(label == -100 for label in labels):
            raise SafeNeuronError(f"fine-tuning pair {n}: no response token fits in max_length={max_length} "
                                  f"(the prompt alone has {len(ids)} tokens); raise --max-length.")
        out.append((seq, labels))
    return out


@contextlib.contextmanager
def lora_adapter(model: nn.Module, *, r: int = 8, alpha: int | None = None, target_modules: Any = "all-linear",
                 seed: int = 0) -> Iterator[nn.Module]:
    """A fresh LoRA adapter (peft) on ``model`` while in the block; yields the PEFT model. On exit the
    adapter is removed without merging and every parameter's ``requires_grad`` is as it was."""
    try:
        import peft
    except ImportError as exc:
        raise SafeNeuronError("the fine-tuning attack needs peft: pip install peft "
                              "(or safeneuron-plugins[trl]).") from exc
    grad = {name: p.requires_grad for name, p in model.named_parameters()}
    config = peft.LoraConfig(r=r, lora_alpha=alpha if alpha is not None else 2 * r, lora_dropout=0.0,
                             target_modules=target_modules, bias="none")
    torch.manual_seed(seed)  # the A matrices' initialisation
    wrapped = peft.get_peft_model(model, config)
    try:
        yield wrapped
    finally:
        wrapped.unload()  # the base layers go back in place of the LoRA layers, unmerged
        for attr in ("peft_config", "_hf_peft_config_loaded"):
            if attr in vars(model):
                delattr(model, attr)
        for name, p in model.named_parameters():
            p.requires_grad_(grad.get(name, p.requires_grad))


def _batch(examples: list[tuple[list[int], list[int]]], pad: int, device):
    """Right-padded input ids, attention mask and labels (-100 on padding and prompt tokens)."""
    ids, mask = pad_batch([seq for seq, _ in examples], pad, device)
    labels, _ = pad_batch([lab for _, lab in examples], -100, device)
    return ids, mask, labels


def run_finetune_attack(model: nn.Module, tokenizer, harmful: list[str], pairs: Sequence[Mapping[str, str]], *,
                        steps: Sequence[int] = DEFAULT_STEPS, judge: Judge | None = None,
                        learning_rate: float = 2e-4, batch_size: int = 4, lora_r: int = 8,
                        target_modules: Any = "all-linear", respect_mask: NeuronMask | None = None, seed: int = 0,
                        max_new_tokens: int = 64, gen_batch_size: int = 16, system_prompt: str | None = None,
                        max_length: int = 256, mlp_modules: str | None = None, progress: bool = True,
                        on_checkpoint: Callable[[int, nn.Module], None] | None = None) -> dict[str, Any]:
    """ASR on ``harmful`` after k LoRA SFT steps on ``pairs`` (rows with ``prompt`` and ``response``), for
    every k of ``steps``; one run to the largest k, evaluated on the way.

    Each step is one AdamW update (no weight decay, gradient norm clipped at 1) on ``batch_size`` pairs,
    drawn in a seeded shuffled order, epoch after epoch. ``respect_mask``: keep the adapter at exactly zero
    on that mask's neurons (off by default: the attacker ignores masks). ``on_checkpoint(k, model)`` is called
    after each evaluation with the model as evaluated (the PEFT model for k > 0). ``results["curve"]`` has
    one entry per k: ASR, n, 95% Wilson interval, refusal and evasive rates, the mean training loss of the
    steps since the previous k; generations are saved under ``finetune@k``."""
    from tqdm.auto import tqdm

    from .attack import rate_summary
    from .generation import generate

    steps = check_steps(steps)
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise OptionsError(f"learning_rate={learning_rate!r} must be a finite number > 0.")
    for name, value in (("batch_size", batch_size), ("lora_r", lora_r)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OptionsError(f"{name}={value!r} must be a whole number >= 1.")
    judge = judge or default_judge()
    examples = training_examples(tokenizer, pairs, system_prompt=system_prompt, max_length=max_length)
    results: dict[str, Any] = {
        "family": "finetune", "judge": judge.name, "n_prompts": len(harmful), "max_new_tokens": max_new_tokens,
        "asr": {}, "rates": {}, "curve": [], "generations": [],
        "finetune": {"n_pairs": len(pairs), "steps": steps, "learning_rate": learning_rate, "batch_size": batch_size,
                     "lora_r": lora_r, "lora_alpha": 2 * lora_r, "target_modules": target_modules, "seed": seed,
                     "respect_mask": respect_mask is not None,
                     "masked_neurons": respect_mask.num_neurons if respect_mask is not None else 0}}
    losses: list[float] = []

    def evaluate(k: int, current: nn.Module) -> None:
        replies = generate(current, tokenizer, harmful, max_new_tokens=max_new_tokens, batch_size=gen_batch_size,
                           system_prompt=system_prompt, desc=f"attack finetune@{k}", progress=progress)
        verdicts = judge.judge(harmful, replies)
        name = f"finetune@{k}"
        for prompt, reply, v in zip(harmful, replies, verdicts):
            results["generations"].append({"condition": name, "prompt": prompt, "response": reply, "label": v.label,
                                           "success": v.success, "detail": v.detail})
        summary = rate_summary(verdicts)
        results["rates"][name] = summary
        results["asr"][str(k)] = summary["compliance"]
        results["curve"].append({"steps": k, "asr": summary["compliance"], "n": summary["n"],
                                 "ci95": summary["ci95"]["compliance"], "refusal": summary["refusal"],
                                 "evasive": summary["evasive"],
                                 "train_loss": sum(losses) / len(losses) if losses else None})
        losses.clear()
        if on_checkpoint is not None:
            on_checkpoint(k, current)

    if steps[0] == 0:
        evaluate(0, model)
    if steps[-1] == 0:
        return results
    was_training = model.training
    order_rng = random.Random(seed)
    order: list[int] = []
    pad = pad_id_of(tokenizer)
    with lora_adapter(model, r=lora_r, target_modules=target_modules, seed=seed) as peft_model:
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        results["finetune"]["trainable_parameters"] = sum(p.numel() for p in trainable)
        freezer = None
        if respect_mask is not None:
            from ..architectures import find_mlp_layers
            from ..freeze import NeuronFreezer

            freezer = NeuronFreezer(peft_model, find_mlp_layers(peft_model, mlp_modules), respect_mask).attach()
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.0)
        device = input_device(peft_model)
        try:
            with tqdm(total=steps[-1], desc="finetune attack: LoRA steps", unit="step", disable=not progress,
                      dynamic_ncols=True) as bar:
                for step in range(1, steps[-1] + 1):
                    while len(order) < batch_size:
                        epoch = list(range(len(examples)))
                        order_rng.shuffle(epoch)
                        order += epoch
                    chosen, order[:] = order[:batch_size], order[batch_size:]
                    ids, mask, labels = _batch([examples[i] for i in chosen], pad, device)
                    peft_model.train()
                    loss = peft_model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    if freezer is not None:
                        freezer.restore()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                    if step in steps:
                        peft_model.eval()
                        evaluate(step, peft_model)
        finally:
            if freezer is not None:
                freezer.detach()
            peft_model.train(was_training)
    model.train(was_training)
    return results
