"""Build a safety DPO preference set from a model's own outputs (``safeneuron make-pairs``).

Harmful prompt: chosen = a refusal (varied templates written by the project), rejected = the
model's own compliant reply (only when it complied). Harmless prompt: chosen = the model's own
answer (unless it refused), rejected = a refusal, so training does not teach over-refusal; or, with
``harmless_rejected``, a worse answer that is no refusal either, as in human helpfulness data: the
model's own answer to another prompt, or another model's answer. Contrasting every helpful
answer with a refusal also teaches the model to stop refusing harmful prompts: plain DPO of Qwen2.5-
Coder-0.5B on such pairs raised its attack success on held-out harmful prompts from 0.26 to 0.86
(docs/research/paper15/README.md).

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

#: what a helpfulness pair can reject besides given replies (see ``make_pairs``)
HARMLESS_REJECTED = ("refusal", "other_answer")


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
               allow_other_weights: bool = False,
               harmless_rejected: str | list[str] = "refusal") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Preference rows in trl's format plus counts of what was kept and skipped.

    ``rejected_mask``: generate the replies to harmful prompts with these neurons pruned (see the
    module's docstring); a mask identified on other weights of the same architecture is an error unless
    ``allow_other_weights``. ``mlp_modules`` is the ``safeneuron_mlp_modules`` spec for an architecture
    that is not recognised automatically. ``harmless_rejected``: what a harmless prompt's pair rejects:
    ``"refusal"`` (a refusal template), ``"other_answer"`` (the model's own answer to another harmless prompt
    of the set: off-topic, never a refusal), or one reply per harmless prompt (e.g. a weaker model's); a pair
    is skipped when that reply is empty, declines, or equals the chosen one."""
    if not isinstance(harmless_rejected, str) and len(harmless_rejected) != len(harmless):
        raise ValueError(f"harmless_rejected has {len(harmless_rejected)} replies for {len(harmless)} harmless prompts")
    if isinstance(harmless_rejected, str) and harmless_rejected not in HARMLESS_REJECTED:
        raise ValueError(f"harmless_rejected {harmless_rejected!r}: one of {', '.join(HARMLESS_REJECTED)}, or one "
                         "reply per harmless prompt")
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
    usable = []
    for i, v in enumerate(judge.judge(harmless, replies)):
        if v.declined or not replies[i].strip():  # a partial refusal is no helpful reply either
            counts["harmless_skipped_refused"] += 1
        else:
            usable.append(i)
    if harmless_rejected == "refusal":
        rejected = {i: rng.choice(refusals) for i in usable}
    elif harmless_rejected == "other_answer":  # a seeded cycle: every usable answer is rejected once, elsewhere
        order = rng.sample(usable, len(usable))
        rejected = {i: replies[order[(k + 1) % len(order)]] for k, i in enumerate(order)} if len(order) > 1 else {}
    else:
        rejected = {i: harmless_rejected[i] for i in usable}
        verdicts = judge.judge([harmless[i] for i in rejected], list(rejected.values()))
        rejected = {i: r for (i, r), v in zip(rejected.items(), verdicts) if not v.declined}
    for i in usable:
        if i not in rejected or not rejected[i].strip() or rejected[i].strip() == replies[i].strip():
            counts["harmless_skipped_rejected"] = counts.get("harmless_skipped_rejected", 0) + 1
            continue
        rows.append(_row(harmless[i], replies[i], rejected[i], "harmless", conversational))
        counts["harmless_pairs"] += 1
    rng.shuffle(rows)
    return rows, counts


def _hh_turns(dialogue: str) -> list[tuple[str, str]] | None:
    """``[(role, text), ...]`` of an Anthropic HH-RLHF dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ..."), or
    None when it is not in that form."""
    import re

    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + dialogue.lstrip("\n"))
    if parts[0].strip() or len(parts) < 3:
        return None
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def read_preference_pairs(path: str) -> list[dict[str, str]]:
    """Single-turn human preference pairs ``{"prompt", "chosen", "rejected"}`` from a JSON-lines file in trl's
    standard form (string fields ``prompt``, ``chosen``, ``rejected``) or in Anthropic HH-RLHF's form (full
    dialogues in ``chosen`` and ``rejected`` that differ in the last assistant turn). Dialogues of more than
    one human turn are skipped (the prompt would not be one request)."""
    from .errors import PromptSourceError
    from .files import read_json_objects

    pairs = []
    for number, row in read_json_objects(path, f"safety pairs {path}", "of preference pairs (prompt/chosen/rejected, "
                                                                      "or HH-RLHF's chosen/rejected dialogues)"):
        if not isinstance(row.get("chosen"), str) \
                or not isinstance(row.get("rejected"), str):
            raise PromptSourceError(f"safety pairs {path}: line {number} has no string fields 'chosen' and "
                                    "'rejected'.")
        if isinstance(row.get("prompt"), str):
            pairs.append({"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]})
            continue
        chosen, rejected = _hh_turns(row["chosen"]), _hh_turns(row["rejected"])
        if chosen is None or rejected is None:
            raise PromptSourceError(f"safety pairs {path}: line {number} has no 'prompt' and its dialogues are not "
                                    "in HH-RLHF's '\\n\\nHuman: ...\\n\\nAssistant: ...' form.")
        if len(chosen) == len(rejected) == 2 and chosen[0] == rejected[0] and chosen[0][0] == "Human" \
                and chosen[1][0] == rejected[1][0] == "Assistant":
            pairs.append({"prompt": chosen[0][1], "chosen": chosen[1][1], "rejected": rejected[1][1]})
    return pairs


#: which chosen replies a safety pair may have (``select_safety_pairs``' ``chosen``), as the judge labels them
SAFETY_CHOSEN = {"refusal_or_evasive": ("refusal", "evasive"), "refusal": ("refusal",)}


def select_safety_pairs(pairs: list[dict[str, str]], *, judge: Judge | None = None, max_words: int = 96,
                        n: int | None = None, chosen: str = "refusal_or_evasive") -> list[dict[str, str]]:
    """The pairs that teach refusal, in file order: both replies at most ``max_words`` words, the chosen reply
    a refusal or (``chosen="refusal_or_evasive"``) a non-answer by ``judge`` (default: the refusal rules,
    ``refusal-patterns-v4``) and the rejected one not a refusal; different replies; the first ``n`` of them.
    ``chosen="refusal"`` keeps refusals only: most of HH-RLHF's non-answers are a question back ("Why do you
    ask?"), which teaches asking back rather than refusing."""
    from .errors import OptionsError
    from .evaluate.judges import RefusalJudgeV4

    if chosen not in SAFETY_CHOSEN:
        raise OptionsError(f"safety pairs: chosen {chosen!r} is not one of {', '.join(SAFETY_CHOSEN)}; "
                           "use refusal (refusals only) or refusal_or_evasive (refusals and non-answers).")
    labels = SAFETY_CHOSEN[chosen]
    judge = judge or RefusalJudgeV4()
    short = [p for p in pairs if p["chosen"].strip() != p["rejected"].strip()
             and len(p["chosen"].split()) <= max_words and len(p["rejected"].split()) <= max_words]
    prompts = [p["prompt"] for p in short]
    good = judge.judge(prompts, [p["chosen"] for p in short])
    bad = judge.judge(prompts, [p["rejected"] for p in short])
    kept = [p for p, c, r in zip(short, good, bad) if c.label in labels and r.label != "refusal"]
    return kept[:n] if n is not None else kept


def preference_rows(pairs: list[dict[str, str]], kind: str = "harmful",
                    conversational: bool = True) -> list[dict[str, Any]]:
    """``pairs`` as trl preference rows (the same form as :func:`make_pairs`' rows)."""
    return [_row(p["prompt"], p["chosen"], p["rejected"], kind, conversational) for p in pairs]
