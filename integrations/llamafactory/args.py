"""Translate a LLaMA-Factory training config into (LLaMA-Factory args, SafeNeuron options).

The ``safeneuron_*`` keys are checked against the one options schema
(:class:`safeneuron_plugins.options.SafeNeuronOptions`); everything else goes to LLaMA-Factory
untouched, so a config without SafeNeuron keys reaches ``run_exp`` exactly as written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from safeneuron_plugins.errors import OptionsError
from safeneuron_plugins.options import PREFIX, SafeNeuronOptions, split_options
from safeneuron_plugins.training import warn_if_freezing_off

SAFENEURON_STAGE = "safeneuron_dpo"
"""The stage name that means DPO with the safety neurons frozen."""

FREEZING_STAGES = ("dpo",)
"""LLaMA-Factory stages with which freezing is supported (the paper's setting: preference training)."""


def prepare_train_args(
    args: Mapping[str, Any] | list[str], *, source: str = "the LLaMA-Factory config", warn: bool = True
) -> tuple[dict[str, Any] | list[str], SafeNeuronOptions | None]:
    """Split off and validate the SafeNeuron options.

    Returns LLaMA-Factory's arguments (same form as given: dict, or ``--key value`` list) and the
    options, or None when freezing is off (then nothing of SafeNeuron takes part in the run).
    ``stage: safeneuron_dpo`` becomes ``stage: dpo`` with ``safeneuron_freeze: true``. SafeNeuron keys
    without freezing are logged as a warning (``warn``), since they would silently do nothing.
    """
    if isinstance(args, Mapping):
        ours, rest = split_options(args)
        stage = rest.get("stage")
    else:
        ours, rest = _split_argv(list(args))
        stage = _argv_value(rest, "stage")

    if stage == SAFENEURON_STAGE:
        if PREFIX + "freeze" in ours and not _truthy(ours[PREFIX + "freeze"]):
            raise OptionsError(
                f"`safeneuron_freeze` is false but `stage: {SAFENEURON_STAGE}` means DPO with the safety "
                f"neurons frozen in {source}. Use `stage: dpo` to train without freezing, or remove "
                "`safeneuron_freeze`.")
        ours[PREFIX + "freeze"] = True
        rest = _set_stage(rest, "dpo")
        stage = "dpo"

    options = SafeNeuronOptions.from_dict(ours, source=source) if ours else None
    if options is None or not options.safeneuron_freeze:
        if options is not None and warn:
            warn_if_freezing_off(options, ours, where=source)
        return rest, None
    if stage not in FREEZING_STAGES:
        raise OptionsError(
            f"`safeneuron_freeze: true` needs a preference-training stage, but {source} has "
            f"`stage: {stage}`. Use `stage: {SAFENEURON_STAGE}` (or `stage: dpo`), or set "
            "`safeneuron_freeze: false`.")
    return rest, options


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1", "yes"))


def _set_stage(rest: dict[str, Any] | list[str], stage: str) -> dict[str, Any] | list[str]:
    if isinstance(rest, dict):
        return {**rest, "stage": stage}
    out = list(rest)
    for i, item in enumerate(out):
        if item == "--stage" and i + 1 < len(out):
            out[i + 1] = stage
        elif item.startswith("--stage="):
            out[i] = "--stage=" + stage
    return out


def _argv_value(argv: list[str], key: str) -> str | None:
    for i, item in enumerate(argv):
        if item == f"--{key}" and i + 1 < len(argv):
            return argv[i + 1]
        if item.startswith(f"--{key}="):
            return item.split("=", 1)[1]
    return None


def _split_argv(argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Pull ``--safeneuron_x value`` / ``--safeneuron_x=value`` / bare ``--safeneuron_x`` out of argv."""
    ours: dict[str, Any] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        item = argv[i]
        if item.startswith("--" + PREFIX):
            key, eq, value = item[2:].partition("=")
            if not eq:
                if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    value = argv[i + 1]
                    i += 1
                else:
                    value = "true"  # a bare flag
            ours[key] = None if value in ("None", "null") else value
        else:
            rest.append(item)
        i += 1
    return ours, rest
