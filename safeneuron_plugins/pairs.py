"""Build a safety DPO preference set from a model's own outputs (``safeneuron make-pairs``).

Harmful prompt: chosen = a refusal (varied templates written by the project), rejected = the
model's own compliant reply (only when it complied). Harmless prompt: chosen = the model's own
answer (unless it refused), rejected = a refusal, so training does not teach over-refusal.

A vendor-aligned model may refuse nearly every harmful prompt and so give few safety pairs (Qwen2.5-
Coder-1.5B refused 191 of 200 AdvBench prompts). ``rejected_mask`` then generates the harmful replies
with those neurons pruned (its safety neurons: the pruning attack), which makes the model comply; the
harmless replies always come from the model as it is.
"""

from __future__ import annotations

import contextlib
import json
import random
from importlib import resources
from typing import Any

from torch import nn

from .evaluate.generation import generate
from .evaluate.judges import Judge, default_judge
from .fingerprint import checked_layers
from .mask import NeuronMask
from .prune import pruned


def refusal_templates() -> list[str]:
    text = (resources.files("safeneuron_plugins") / "data" / "refusals.json").read_text(encoding="utf-8")
    return list(json.loads(text))


def _row(prompt: str, chosen: str, rejected: str, kind: str, conversational: bool) -> dict[str, Any]:
    if conversational:
        return {"prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}], "kind": kind}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "kind": kind}


def make_pairs(model: nn.Module, tokenizer, harmful: list[str], harmless: list[str], *,
               judge: Judge | None = None, max_new_tokens: int = 96, batch_size: int = 16,
               include_evasive: bool = False, conversational: bool = True, seed: int = 0,
               progress: bool = True, rejected_mask: NeuronMask | None = None, mlp_modules: str | None = None,
               allow_other_weights: bool = False) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows in trl's format plus counts of what was kept and skipped.

    ``rejected_mask``: generate the replies to harmful prompts with these neurons pruned (see the
    module's docstring); a mask identified on other weights of the same architecture is an error unless
    ``allow_other_weights``. ``mlp_modules`` is the ``safeneuron_mlp_modules`` spec for an architecture
    that is not recognised automatically."""
    judge = judge or default_judge()
    rng = random.Random(seed)
    refusals = refusal_templates()
    rows: list[dict[str, Any]] = []
    counts = {"harmful_pairs": 0, "harmful_skipped_refused": 0, "harmful_skipped_evasive": 0,
              "harmless_pairs": 0, "harmless_skipped_refused": 0}
    with contextlib.ExitStack() as stack:
        if rejected_mask is not None:
            layers = checked_layers(model, rejected_mask, mlp_modules, what="rejected_mask",
                                    allow_other_weights=allow_other_weights)
            stack.enter_context(pruned(model, layers, rejected_mask))
        replies = generate(model, tokenizer, harmful, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           desc="harmful replies" + (" (safety neurons pruned)" if rejected_mask else ""),
                           progress=progress)
    for prompt, reply, v in zip(harmful, replies, judge.judge(harmful, replies)):
        if v.label == "refusal":
            counts["harmful_skipped_refused"] += 1
        elif v.label == "evasive" and not include_evasive:
            counts["harmful_skipped_evasive"] += 1
        else:
            rows.append(_row(prompt, rng.choice(refusals), reply, "harmful", conversational))
            counts["harmful_pairs"] += 1
    replies = generate(model, tokenizer, harmless, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       desc="harmless replies", progress=progress)
    for prompt, reply, v in zip(harmless, replies, judge.judge(harmless, replies)):
        if v.declined or not reply.strip():  # a partial refusal is no helpful reply either
            counts["harmless_skipped_refused"] += 1
            continue
        rows.append(_row(prompt, reply, rng.choice(refusals), "harmless", conversational))
        counts["harmless_pairs"] += 1
    rng.shuffle(rows)
    return rows, counts
