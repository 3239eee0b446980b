"""Capability through lm-evaluation-harness (``safeneuron capability --lm-eval``, ``compare --lm-eval``).

:func:`lm_eval_scores` runs ``lm_eval.simple_evaluate`` on a model already loaded (wrapped in lm_eval's
``HFLM``), optionally with a mask's neurons pruned while it runs (capability under the pruning attack, as
the paper reports it), and returns per-task metrics with lm_eval's standard errors, the lm_eval version and
hashes that identify each task's data and configuration.

lm_eval is an optional dependency (``pip install 'safeneuron-plugins[lm-eval]'``), imported only here and
only when a function needs it. Tasks are lm_eval's own (``arc_easy``, ``truthfulqa_mc2``, ``gsm8k``, ...;
their data come from the Hugging Face hub or its local cache) or defined by YAML files in a local
directory (``include_path``); ``tests/data/lm_eval_tasks`` holds an example that reads a local JSONL.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import OptionsError, SafeNeuronError
from ..mask import NeuronMask

INSTALL = "pip install 'safeneuron-plugins[lm-eval]'"


class LmEvalMissingError(SafeNeuronError, ImportError):
    """lm-evaluation-harness is not installed."""


def require_lm_eval(flag: str = "--lm-eval"):
    """The ``lm_eval`` module, or an error naming ``flag`` and the install command."""
    try:
        import lm_eval
    except ImportError as exc:
        raise LmEvalMissingError(f"{flag} needs lm-evaluation-harness, which is not installed here ({exc}). "
                                 f"Install it with: {INSTALL}") from None
    return lm_eval


def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return getattr(require_lm_eval(), "__version__", "unknown")


def parse_tasks(text: str | list[str] | tuple[str, ...], flag: str = "--lm-eval") -> list[str]:
    """``arc_easy,gsm8k`` (or a list) -> distinct task names, in order."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    names = [p.strip() for p in parts if p and p.strip()]
    if not names:
        raise OptionsError(f"{flag} {text!r}: give lm-evaluation-harness task names separated by commas, "
                           "e.g. --lm-eval arc_easy,truthfulqa_mc2,gsm8k.")
    return list(dict.fromkeys(names))


def check_include(include_path: str | Path | None, flag: str = "--lm-eval-include") -> Path | None:
    """The task directory, which must exist and hold at least one YAML file."""
    if include_path is None:
        return None
    path = Path(include_path).expanduser()
    if not path.exists():
        raise OptionsError(f"{flag} {str(include_path)!r}: no such directory. Give the directory that holds your "
                           "lm-evaluation-harness task YAML files.")
    if not path.is_dir():
        raise OptionsError(f"{flag} {str(include_path)!r} is not a directory; give the directory that holds the "
                           "task YAML files (lm-evaluation-harness scans it for *.yaml).")
    if not any(path.rglob("*.yaml")) and not any(path.rglob("*.yml")):
        raise OptionsError(f"{flag} {str(include_path)!r} holds no task YAML file (*.yaml).")
    return path


_MANAGERS: dict[str | None, Any] = {}


def task_manager(include_path: str | Path | None = None, flag: str = "--lm-eval-include"):
    """lm_eval's TaskManager over its own tasks plus ``include_path`` (cached: building the index reads
    every task YAML of the harness)."""
    require_lm_eval()
    path = check_include(include_path, flag)
    key = str(path.resolve()) if path is not None else None
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        with _quiet_lm_eval(True):
            _MANAGERS[key] = TaskManager(include_path=key)
    return _MANAGERS[key]


def check_tasks(tasks: list[str], include_path: str | Path | None = None, *, flag: str = "--lm-eval",
                include_flag: str = "--lm-eval-include"):
    """Raise naming ``flag`` for a task name lm_eval does not know (with close matches and a few of the
    include directory's tasks); returns the TaskManager. Loads no data and no model."""
    manager = task_manager(include_path, include_flag)
    known = set(manager.all_tasks)
    for name in tasks:
        if name in known or Path(name).suffix in (".yaml", ".yml") and Path(name).is_file():
            continue
        close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
        local = []
        if include_path is not None:
            root = Path(include_path).expanduser().resolve()
            local = [k for k, e in getattr(manager, "task_index", {}).items()
                     if getattr(e, "yaml_path", None) and root in Path(e.yaml_path).resolve().parents][:8]
        hint = (f" Did you mean: {', '.join(close)}?" if close else
                f" A few of lm_eval's {len(manager.all_subtasks)} tasks: arc_easy, arc_challenge, truthfulqa_mc2, "
                "gsm8k, hellaswag, mmlu.")
        where = (f" The tasks of {include_flag} {str(include_path)!r}: {', '.join(sorted(local)) or 'none'}."
                 if include_path is not None else
                 f" A task of your own: give its directory with {include_flag} DIR.")
        raise OptionsError(f"{flag}: unknown lm-evaluation-harness task {name!r}.{hint}{where} "
                           "`lm-eval ls tasks` lists them all.")
    return manager


@contextlib.contextmanager
def _quiet_lm_eval(quiet: bool):
    """lm_eval logs every step at INFO/WARNING; keep only errors unless progress is wanted."""
    loggers = [logging.getLogger(n) for n in ("lm-eval", "lm_eval")]
    levels = [lg.level for lg in loggers]
    if quiet:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _metrics(raw: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """lm_eval's ``{"acc,none": v, "acc_stderr,none": s}`` -> ``{"acc": {"value": v, "stderr": s}}`` (the
    filter is kept in the name when it is not ``none``: ``exact_match,strict-match``)."""
    out: dict[str, dict[str, float | None]] = {}
    for key, value in raw.items():
        if "," not in key or "_stderr," in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric},{filt}"
        stderr = raw.get(f"{metric}_stderr,{filt}")
        out[name] = {"value": None if value is None else float(value),
                     "stderr": float(stderr) if isinstance(stderr, (int, float)) else None}
    return out


def _config_hash(config: dict) -> str:
    text = json.dumps(_json_safe(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def lm_eval_scores(model: nn.Module, tokenizer, tasks: str | list[str], *, mask: NeuronMask | None = None,
                   include_path: str | Path | None = None, limit: int | float | None = None, batch_size: int = 8,
                   num_fewshot: int | None = None, apply_chat_template: bool = False, mlp_modules: str | None = None,
                   bootstrap_iters: int = 1000, samples: bool = False, progress: bool = True,
                   allow_other_weights: bool = False) -> dict[str, Any]:
    """Score ``model`` on lm-evaluation-harness ``tasks`` (names, or ``"a,b"``), in this process.

    ``mask``: its neurons are pruned (:func:`~safeneuron_plugins.prune.pruned`) while lm_eval runs and
    restored afterwards; it is checked against the model first (another model's mask is an error, and so is
    one identified on other weights of the same architecture unless ``allow_other_weights``).
    ``include_path``: a directory of task YAML files (local tasks). ``limit``: at most this many documents
    per task (lm_eval's ``limit``, a fraction when < 1). ``samples``: also return each document's
    target and filtered responses (for multiple choice: the (loglikelihood, is_greedy) of every choice).

    Returns ``{"lm_eval_version", "tasks": {name: {"metrics": {metric: {"value", "stderr"}}, "n", "n_total",
    "num_fewshot", "version", "higher_is_better", "task_hash", "config_hash"}}, "groups", "limit",
    "num_fewshot", "batch_size", "apply_chat_template", "pruned_neurons"}``. ``task_hash`` is lm_eval's own
    (sha256 over the documents', prompts' and targets' hashes, as in its results files); ``config_hash`` is
    the sha256 of the task's resolved configuration."""
    require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.utils import hash_string

    names = parse_tasks(tasks)
    manager = check_tasks(names, include_path)
    quiet = not progress

    class _LM(HFLM):  # lm_eval's progress bars follow ``progress``
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm or quiet)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm or quiet)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=disable_tqdm or quiet)

    layers = None
    if mask is not None:
        from ..fingerprint import checked_layers

        layers = checked_layers(model, mask, mlp_modules, what="--mask", allow_other_weights=allow_other_weights)
    was_training = model.training  # HFLM puts the model in eval mode; put it back as it was
    rng = _rng_state()  # simple_evaluate seeds python, numpy and torch (for reproducible scores); restored after
    try:
        with _quiet_lm_eval(quiet):
            lm = _LM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            with _pruned(model, layers, mask):
                raw = simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size,
                                      apply_chat_template=apply_chat_template, bootstrap_iters=bootstrap_iters,
                                      log_samples=True, confirm_run_unsafe_code=False)
    finally:
        model.train(was_training)
        _set_rng_state(rng)
    task_results: dict[str, Any] = {}
    for name, result in raw["results"].items():
        docs = raw.get("samples", {}).get(name, [])
        entry = {
            "metrics": _metrics(result),
            "n": raw.get("n-samples", {}).get(name, {}).get("effective", len(docs)),
            "n_total": raw.get("n-samples", {}).get(name, {}).get("original"),
            "num_fewshot": raw.get("n-shot", {}).get(name),
            "version": _json_safe(raw.get("versions", {}).get(name)),
            "higher_is_better": _json_safe(raw.get("higher_is_better", {}).get(name, {})),
            "task_hash": hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in docs))
            if docs else None,
            "config_hash": _config_hash(raw.get("configs", {}).get(name, {})) if name in raw.get("configs", {}) else None,
        }
        if samples:
            entry["samples"] = [{"doc_id": s["doc_id"], "target": _json_safe(s["target"]),
                                 "responses": _json_safe(s["filtered_resps"])} for s in docs]
        task_results[name] = entry
    return {
        "lm_eval_version": lm_eval_version(),
        "tasks": task_results,
        "groups": {name: {"metrics": _metrics(result)} for name, result in raw.get("groups", {}).items()},
        "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
        "apply_chat_template": apply_chat_template,
        "include_path": str(include_path) if include_path is not None else None,
        "pruned_neurons": mask.num_neurons if mask is not None else 0,
    }


def _rng_state():
    import random

    import numpy as np
    import torch

    return random.getstate(), np.random.get_state(), torch.get_rng_state()


def _set_rng_state(state) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state[0])
    np.random.set_state(state[1])
    torch.set_rng_state(state[2])


@contextlib.contextmanager
def _pruned(model: nn.Module, layers, mask: NeuronMask | None):
    if mask is None:
        yield
        return
    from ..prune import pruned

    with pruned(model, layers, mask):
        yield

