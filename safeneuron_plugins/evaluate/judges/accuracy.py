"""Measuring a judge on labelled replies; ``python -m safeneuron_plugins.evaluate.judges`` prints the
judges' accuracy per set, split, label and kind (``--fit`` refits the relevance threshold).

Each labelled set has a ``dev`` split, which rules and thresholds are fitted to, and a frozen ``test``
split, which they never are: its rows are pinned by :func:`split_digest` in the tests, and the misjudged
rows printed to work on (``--errors``) are the dev splits' only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path

from .base import Judge
from .loading import load_judge
from .relevance import JudgeModelMissing, RelevanceJudge, fit_relevance_threshold

_DATA = Path(__file__).resolve().parents[2] / "data"
LABELLED_SET = _DATA / "judge_labelled.jsonl"
RELEVANCE_SET = _DATA / "judge_relevance.jsonl"
#: real replies of the project's own models labelled by meaning; prompts by reference
#: (data card safeneuron_plugins/data/judge_real.md)
REAL_SET = _DATA / "judge_real.jsonl"


#: every judge's figures on the real replies' frozen test split, written by bench/judges.py
MEASURED = _DATA / "judge_measured.json"


def measured(name: str) -> str:
    """What a report prints beside a judge's name: its accuracy and both error rates on judge_real.jsonl's frozen
    test split (bench/judges.py), or that it was not measured there."""
    try:
        figures = json.loads(MEASURED.read_text(encoding="utf-8"))["judges"].get(name)
    except (OSError, ValueError, KeyError):
        figures = None
    if not figures:
        return "accuracy not measured on the labelled real replies"
    return (f"accuracy {figures['accuracy']:.3f} on {figures['n']} held-out real replies labelled by meaning; "
            f"false success {figures['false_success']:.3f}, missed success {figures['missed_success']:.3f}")


def shared_data_dir() -> Path:
    """The benchmark prompts the project does not ship: $SAFENEURON_SHARED_DATA, else ../shared/data beside the
    repository."""
    env = os.environ.get("SAFENEURON_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data"


#: the files a row's ``prompt_ref`` dataset names (harmbench and harmless_prompts are read from shared_data_dir())
_REF_FILES = {"harmbench": "harmful_harmbench.jsonl", "harmless_prompts": "harmless_prompts.jsonl",
              "safeneuron_harmful": _DATA / "harmful.jsonl", "safeneuron_harmless": _DATA / "harmless.jsonl"}


def resolve_prompts(rows: list[dict]) -> list[dict]:
    """Rows with a ``prompt_ref`` ({dataset, index, sha1}) get their ``prompt`` text read from the dataset file,
    checked against the SHA-1; a missing file or a changed prompt is an error naming it."""
    cache: dict[str, list[str]] = {}
    out = []
    for row in rows:
        ref = row.get("prompt_ref")
        if ref is None or "prompt" in row:
            out.append(row)
            continue
        name = ref["dataset"]
        if name not in cache:
            target = _REF_FILES.get(name)
            if target is None:
                raise ValueError(f"prompt_ref dataset {name!r} is not one of {sorted(_REF_FILES)}")
            path = target if isinstance(target, Path) else shared_data_dir() / target
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: the labelled set's prompts ({name}) are read from the benchmark data, which the "
                    "project does not ship. Put the shared data beside the repository (../shared/data) or set "
                    "SAFENEURON_SHARED_DATA to its folder.")
            cache[name] = [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines()
                           if line.strip()]
        prompt = cache[name][ref["index"]]
        if hashlib.sha1(prompt.encode("utf-8")).hexdigest() != ref["sha1"]:
            raise ValueError(f"{name} row {ref['index']} is not the prompt this label was made for (SHA-1 differs); "
                             "the benchmark file changed.")
        out.append({**row, "prompt": prompt})
    return out


def load_labelled(path: str | Path = LABELLED_SET, split: str | None = None) -> list[dict]:
    """Labelled replies ({"prompt" or "prompt_ref", "response", "label"[, "split", "kind", ...]}), optionally one
    split; prompts given by reference are read in (:func:`resolve_prompts`)."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return resolve_prompts([r for r in rows if split is None or r.get("split") == split])


def split_digest(rows: list[dict]) -> str:
    """sha256 of ``rows`` (canonical JSON, in order): a frozen split's rows cannot be added, dropped, moved,
    edited or relabelled without it changing."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def judge_accuracy(judge: Judge, rows: list[dict], verdicts: list | None = None) -> dict:
    """Accuracy overall, per true label, per kind, per script and per stratum (rows with a "kind" / "script" /
    "stratum": how a row was drawn), the share of rows whose success verdict (compliance or not) is right, the two error
    directions as shares of all rows (``false_success``: judged compliance, labelled otherwise; ``missed_success``:
    labelled compliance, judged otherwise), the confusion counts, the misjudged rows and the seconds the judge
    took. ``verdicts``: already made (then ``seconds`` is None)."""
    start = time.perf_counter()
    if verdicts is None:
        verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
        seconds = time.perf_counter() - start
    else:
        seconds = None
    per_label: dict[str, dict] = {}
    per_kind: dict[str, dict] = {}
    per_script: dict[str, dict] = {}
    per_stratum: dict[str, dict] = {}
    confusion: Counter = Counter()
    errors = []
    false_success = missed_success = 0
    for row, v in zip(rows, verdicts):
        ok = v.label == row["label"]
        false_success += v.success and row["label"] != "compliance"
        missed_success += row["label"] == "compliance" and not v.success
        for table, key in ((per_label, row["label"]), (per_kind, row.get("kind")), (per_script, row.get("script")),
                           (per_stratum, row.get("stratum"))):
            if key is None:
                continue
            stats = table.setdefault(key, {"n": 0, "correct": 0})
            stats["n"] += 1
            stats["correct"] += ok
        confusion[(row["label"], v.label)] += 1
        if not ok:
            errors.append({**row, "predicted": v.label, "detail": v.detail})
    for stats in [*per_label.values(), *per_kind.values(), *per_script.values(), *per_stratum.values()]:
        stats["accuracy"] = stats["correct"] / stats["n"]
    correct = sum(s["correct"] for s in per_label.values())
    n = len(rows) or float("nan")
    return {"judge": judge.name, "n": len(rows), "accuracy": correct / n if rows else float("nan"),
            "success_accuracy": 1 - (false_success + missed_success) / n,
            "false_success": false_success / n, "missed_success": missed_success / n,
            "per_label": per_label, "per_kind": per_kind, "per_script": per_script, "per_stratum": per_stratum,
            "confusion": {f"{t}->{p}": n for (t, p), n in sorted(confusion.items())}, "errors": errors,
            "seconds": seconds}


def _print_accuracy(judge: Judge, rows: list[dict], set_name: str, show_errors: bool) -> None:
    for split in sorted({r.get("split", "all") for r in rows}):
        part = [r for r in rows if r.get("split", "all") == split]
        for subset, subrows in (("", part), (" unambiguous", [r for r in part if not r.get("ambiguous")])):
            if subset and len(subrows) == len(part):
                continue
            acc = judge_accuracy(judge, subrows)
            labels = ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in sorted(acc["per_label"].items()))
            print(f"{judge.name} on {set_name} {split}{subset}: accuracy {acc['accuracy']:.3f}, false success "
                  f"{acc['false_success']:.3f}, missed success {acc['missed_success']:.3f} ({acc['n']} rows; {labels})")
            if acc["per_kind"] and not subset:
                kinds = ", ".join(f"{k} {v['correct']}/{v['n']}" for k, v in sorted(acc["per_kind"].items()))
                print(f"    per kind: {kinds}")
            if show_errors and not subset and split == "test":
                print(f"    ({len(acc['errors'])} misjudged; the frozen test split's rows are not shown: rules are "
                      "fitted to dev only)")
            elif show_errors and not subset:
                for e in acc["errors"]:
                    print(f"  [{e['label']}/{e.get('kind', '')} -> {e['predicted']}] {e['response'][:90]!r} ({e['detail']})")


def main(argv: list[str] | None = None) -> None:
    """Print the judges' accuracy on the project's labelled sets, per split, label and kind; --fit refits
    the relevance threshold on the dev splits."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--judge", action="append", help="patterns, relevance or classifier:PATH (repeatable; "
                                                         "default: patterns and relevance)")
    parser.add_argument("--data", action="append", help=f"labelled JSONL (repeatable; default: {LABELLED_SET.name}, "
                                                        f"{RELEVANCE_SET.name} and {REAL_SET.name})")
    parser.add_argument("--errors", action="store_true",
                        help="also print the misjudged rows of the dev splits (never the frozen test split's)")
    parser.add_argument("--fit", action="store_true", help="fit the relevance threshold on the dev splits and print it")
    args = parser.parse_args(argv)
    datasets = [Path(p) for p in (args.data or [LABELLED_SET, RELEVANCE_SET, REAL_SET])]
    if args.fit:  # the threshold's own sets (the real replies are for measuring, not fitting)
        datasets = [Path(p) for p in (args.data or [LABELLED_SET, RELEVANCE_SET])]
        judge = RelevanceJudge()
        dev = [r for path in datasets for r in load_labelled(path, split="dev")]
        print(f"relevance threshold fitted on {len(dev)} dev rows: {fit_relevance_threshold(judge, dev):g} "
              f"(in use: {RelevanceJudge.threshold:g})")
        return
    for spec in args.judge or ["patterns", "relevance"]:
        try:
            judge = load_judge(spec)
        except JudgeModelMissing as exc:
            print(f"{spec}: not measured: {exc}")
            continue
        if isinstance(judge, RelevanceJudge):
            start = time.perf_counter()
            judge.embedder  # noqa: B018  (load the model once, timed apart from judging)
            print(f"{judge.name}: embedding model loaded in {time.perf_counter() - start:.1f} s")
        for path in datasets:
            _print_accuracy(judge, load_labelled(path), path.name, args.errors)


if __name__ == "__main__":
    main()
