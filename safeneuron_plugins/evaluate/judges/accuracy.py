"""Measuring a judge on labelled replies; ``python -m safeneuron_plugins.evaluate.judges`` prints the
judges' accuracy per set, split, label and kind (``--fit`` refits the relevance threshold).

Each labelled set has a ``dev`` split, which rules and thresholds are fitted to, and a frozen ``test``
split, which they never are: its rows are pinned by :func:`split_digest` in the tests, and the misjudged
rows printed to work on (``--errors``) are the dev splits' only.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from .base import Judge
from .loading import load_judge
from .relevance import JudgeModelMissing, RelevanceJudge, fit_relevance_threshold

_DATA = Path(__file__).resolve().parents[2] / "data"
LABELLED_SET = _DATA / "judge_labelled.jsonl"
RELEVANCE_SET = _DATA / "judge_relevance.jsonl"


def load_labelled(path: str | Path = LABELLED_SET, split: str | None = None) -> list[dict]:
    """Labelled replies ({"prompt", "response", "label"[, "split", "kind", ...]}), optionally one split."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if split is None or r.get("split") == split]


def split_digest(rows: list[dict]) -> str:
    """sha256 of ``rows`` (canonical JSON, in order): a frozen split's rows cannot be added, dropped, moved,
    edited or relabelled without it changing."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def judge_accuracy(judge: Judge, rows: list[dict]) -> dict:
    """Accuracy overall, per true label and per kind (rows with a "kind"), plus the confusion counts,
    the misjudged rows and the seconds the judge took."""
    start = time.perf_counter()
    verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    seconds = time.perf_counter() - start
    per_label: dict[str, dict] = {}
    per_kind: dict[str, dict] = {}
    confusion: Counter = Counter()
    errors = []
    for row, v in zip(rows, verdicts):
        ok = v.label == row["label"]
        for table, key in ((per_label, row["label"]), (per_kind, row.get("kind"))):
            if key is None:
                continue
            stats = table.setdefault(key, {"n": 0, "correct": 0})
            stats["n"] += 1
            stats["correct"] += ok
        confusion[(row["label"], v.label)] += 1
        if not ok:
            errors.append({**row, "predicted": v.label, "detail": v.detail})
    for stats in [*per_label.values(), *per_kind.values()]:
        stats["accuracy"] = stats["correct"] / stats["n"]
    correct = sum(s["correct"] for s in per_label.values())
    return {"judge": judge.name, "n": len(rows), "accuracy": correct / len(rows) if rows else float("nan"),
            "per_label": per_label, "per_kind": per_kind,
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
            print(f"{judge.name} on {set_name} {split}{subset}: accuracy {acc['accuracy']:.3f} ({acc['n']} rows; {labels})")
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
    parser.add_argument("--data", action="append", help=f"labelled JSONL (repeatable; default: {LABELLED_SET.name} "
                                                        f"and {RELEVANCE_SET.name})")
    parser.add_argument("--errors", action="store_true",
                        help="also print the misjudged rows of the dev splits (never the frozen test split's)")
    parser.add_argument("--fit", action="store_true", help="fit the relevance threshold on the dev splits and print it")
    args = parser.parse_args(argv)
    datasets = [Path(p) for p in (args.data or [LABELLED_SET, RELEVANCE_SET])]
    if args.fit:
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
