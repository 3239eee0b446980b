"""Offline capability checks: over-refusal, perplexity of reference answers, KL to a reference model."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PromptSourceError
from ..identification.batching import input_device
from ..identification.prompts import builtin_path, format_prompts
from .generation import generate
from .judges import Judge, default_judge


def load_reference_pairs(source: str | None = None, limit: int | None = None) -> list[tuple[str, str]]:
    """(prompt, reference answer) rows from a JSONL with prompt/answer (or harmless_prompt/harmless_answer)
    fields; default: the built-in set."""
    from ..files import read_json_objects

    path = source or builtin_path("reference_answers.jsonl")
    rows = [row for _, row in read_json_objects(path, f"--reference-answers {path}", "with prompt/answer fields")]
    pairs = [(r.get("prompt") or r.get("harmless_prompt"), r.get("answer") or r.get("harmless_answer")) for r in rows]
    pairs = [(p, a) for p, a in pairs if p and a]
    if not pairs:
        raise PromptSourceError(f"--reference-answers {path}: no rows with prompt/answer fields.")
    return pairs[:limit] if limit else pairs


def over_refusal(model: nn.Module, tokenizer, harmless: list[str], *, judge: Judge | None = None,
                 max_new_tokens: int = 48, batch_size: int = 16, progress: bool = True, store=None) -> dict:
    """Fraction of harmless prompts the model declines, in full or in part (lower is better): a partial refusal
    ("I'm sorry, but I can't help with that. Here are some games ...") counts, as XSTest counts partial refusals.
    ``store``: an :class:`~safeneuron_plugins.evaluate.store.EvaluationStore` keeping the replies."""
    judge = judge or default_judge()

    def make():
        return generate(model, tokenizer, harmless, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        desc="over-refusal", progress=progress)
    replies = make() if store is None else store.replies({"pruned": (), "max_new_tokens": max_new_tokens},
                                                         harmless, make)
    verdicts = judge.judge(harmless, replies)
    return {"over_refusal": sum(v.declined for v in verdicts) / max(len(verdicts), 1), "judge": judge.name,
            "generations": [{"prompt": p, "response": r, "label": v.label, "declined": v.declined, "detail": v.detail}
                            for p, r, v in zip(harmless, replies, verdicts)]}


def _answer_ids(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt+answer and where the answer starts."""
    if getattr(tokenizer, "chat_template", None) is None:
        p = tokenizer(prompt)["input_ids"]
        full = tokenizer(prompt + " " + answer)["input_ids"]
        return list(full), len(p)
    head = format_prompts(tokenizer, [prompt])[0]
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": answer}], tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    return list(full_ids), len(head_ids)


def perplexity(model: nn.Module, tokenizer, pairs: list[tuple[str, str]], *, progress: bool = True) -> float:
    """exp(mean negative log-likelihood of the reference answers' tokens given their prompts)."""
    from tqdm.auto import tqdm

    device = input_device(model)
    total, count = 0.0, 0
    with torch.inference_mode():
        for prompt, answer in tqdm(pairs, desc="perplexity", disable=not progress, dynamic_ncols=True):
            ids, start = _answer_ids(tokenizer, prompt, answer)
            if len(ids) <= start:
                continue
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, start - 1:-1].float()
            nll = F.cross_entropy(logits, x[0, start:], reduction="sum")
            total += nll.item()
            count += len(ids) - start
    return math.exp(total / max(count, 1))


def kl_to_reference(model: nn.Module, reference: nn.Module, tokenizer, prompts: list[str], *,
                    progress: bool = True) -> float:
    """Mean KL(reference || model) of next-token distributions over every prompt position."""
    from tqdm.auto import tqdm

    texts = format_prompts(tokenizer, prompts)
    templated = getattr(tokenizer, "chat_template", None) is not None
    total, count = 0.0, 0
    with torch.inference_mode():
        for text in tqdm(texts, desc="KL to reference", disable=not progress, dynamic_ncols=True):
            ids = tokenizer(text, add_special_tokens=not templated, return_tensors="pt")["input_ids"]
            p = F.log_softmax(reference(input_ids=ids.to(input_device(reference))).logits[0].float(), -1)
            q = F.log_softmax(model(input_ids=ids.to(input_device(model))).logits[0].float(), -1)
            total += F.kl_div(q.to(p.device), p, log_target=True, reduction="sum").item()
            count += ids.shape[1]
    return total / max(count, 1)
