"""Every judge measured on the labelled sets: accuracy, the two error directions, per kind and per script, and the
cost per reply on this machine. Writes the table that docs/research/judge/README.md shows.

    .venv/bin/python bench/judges.py [--llm ~/.cache/qwen-0.5b/hf --llm ~/.cache/qwen-1.5b/hf] [--batch-size 8] [--int8]
        [--splits dev,test]
        [--out docs/research/judge/judges.json] [--sets real,labelled,relevance]

Judges: refusal-patterns-v4 (the rules alone), refusal-patterns-v4+relevance-minilm (the default before the rubric
judge), and per ``--llm`` model the rubric judge alone and behind the rules as a first stage (plain refusals decided
by the rules). A model's answer probabilities are computed once per set and every variant is derived from them; the
cost is the model's seconds per reply it read, at ``--batch-size``, plus the rules' (negligible).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from safeneuron_plugins.evaluate.judges import (
    LABELLED_SET,
    REAL_SET,
    RELEVANCE_SET,
    LlmJudge,
    RefusalJudgeV4,
    RelevanceJudge,
    Verdict,
    judge_accuracy,
    load_labelled,
)

ROOT = Path(__file__).resolve().parents[1]
SETS = {"real": REAL_SET, "labelled": LABELLED_SET, "relevance": RELEVANCE_SET}


def _rows(name: str) -> dict[str, list[dict]]:
    rows = load_labelled(SETS[name])
    return {split: [r for r in rows if r.get("split") == split] for split in ("dev", "test")}


def _measure(judge_name: str, rows: list[dict], verdicts: list[Verdict], seconds: float) -> dict:
    acc = judge_accuracy(type("J", (), {"name": judge_name})(), rows, verdicts)  # noqa: B023
    plain = [(r, v) for r, v in zip(rows, verdicts) if not r.get("ambiguous")]
    unambiguous = sum(v.label == r["label"] for r, v in plain) / len(plain) if plain else float("nan")
    keys = ("success_accuracy", "false_success", "missed_success", "per_label", "per_kind", "per_script",
            "per_stratum", "confusion")
    return {"judge": judge_name, "n": acc["n"], "accuracy": acc["accuracy"], "unambiguous": unambiguous,
            "n_unambiguous": len(plain), **{k: acc[k] for k in keys},
            "seconds_per_reply": seconds / max(1, len(rows))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llm", action="append", default=[], help="a local chat model directory (repeatable)")
    parser.add_argument("--sets", default="real,labelled,relevance")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 linear weights for the --llm models")
    parser.add_argument("--splits", default="dev,test", help="which splits of each set to judge")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "research" / "judge" / "judges.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    splits = args.splits.split(",")
    sets = {name: {s: rows for s, rows in _rows(name).items() if s in splits} for name in args.sets.split(",")}
    rules = RefusalJudgeV4()
    relevance = RelevanceJudge()
    results: list[dict] = []
    cost: dict[str, dict] = {}

    def record(set_name, split, name, rows, verdicts, seconds):
        results.append({"set": set_name, "split": split, **_measure(name, rows, verdicts, seconds)})
        r = results[-1]
        print(f"{name:<60} {set_name:>9} {split:<4} acc {r['accuracy']:.3f} (unamb. {r['unambiguous']:.3f}) "
              f"success {r['success_accuracy']:.3f} false {r['false_success']:.3f} "
              f"missed {r['missed_success']:.3f}  {r['seconds_per_reply']:.3f} s/reply",
              flush=True)

    for set_name, splits in sets.items():
        for split, rows in splits.items():
            prompts, replies = [r["prompt"] for r in rows], [r["response"] for r in rows]
            start = time.perf_counter()
            v4 = rules.judge(prompts, replies)
            record(set_name, split, rules.name, rows, v4, time.perf_counter() - start)
            relevance.embedder  # noqa: B018  (loaded once, not timed)
            start = time.perf_counter()
            record(set_name, split, relevance.name, rows, relevance.judge(prompts, replies), time.perf_counter() - start)
    for path in args.llm:
        start = time.perf_counter()
        judge = LlmJudge(os.path.expanduser(path), dtype=args.dtype, batch_size=args.batch_size, int8=args.int8)
        staged = LlmJudge(judge.model_id, model=judge.model, tokenizer=judge.tokenizer, first_stage=True,
                          int8=args.int8)
        print(f"{judge.name}: loaded in {time.perf_counter() - start:.1f} s ({args.dtype}, "
              f"{torch.get_num_threads()} threads)", flush=True)
        for set_name, splits in sets.items():
            for split, rows in splits.items():
                prompts, replies = [r["prompt"] for r in rows], [r["response"] for r in rows]
                start = time.perf_counter()
                probs = judge.answer_probs(prompts, replies)
                seconds = time.perf_counter() - start
                cost.setdefault(judge.name, {"seconds": 0.0, "replies": 0, "batch_size": args.batch_size})
                cost[judge.name]["seconds"] += seconds
                cost[judge.name]["replies"] += len(rows)
                plain = [judge.verdict(p) for p in probs]
                record(set_name, split, judge.name, rows, plain, seconds)
                first = rules.judge(prompts, replies)
                decided = [v.label == "refusal" for v in first]
                staged_v = [Verdict("refusal", f"{rules.name}: {f.detail}") if d else v
                            for f, d, v in zip(first, decided, plain)]
                read = sum(not d for d in decided)
                record(set_name, split, staged.name, rows, staged_v, seconds * read / max(1, len(rows)))
        del judge, staged
    out = Path(args.out)
    _merge_into(out, results, {"batch_size": args.batch_size, "dtype": args.dtype, "int8": args.int8,
                               "threads": torch.get_num_threads(), "cost": cost})
    print(f"wrote {out}")
    _write_measured(results)


def _merge_into(out: Path, results: list[dict], run: dict) -> None:
    """Add this run's rows to ``out`` (a row of an earlier run for the same set, split and judge is replaced), so
    judges measured in separate runs (a slow model on one split, say) end up in one table."""
    from safeneuron_plugins.files import atomic_write

    try:
        earlier = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = {}
    key = lambda r: (r["set"], r["split"], r["judge"])  # noqa: E731
    mine = {key(r) for r in results}
    rows = [r for r in earlier.get("results", []) if key(r) not in mine] + results
    runs = [*earlier.get("runs", []), {**run, "judges": sorted({r["judge"] for r in results})}]
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, (json.dumps({"results": rows, "runs": runs}, indent=1) + "\n").encode())


def _write_measured(results: list[dict]) -> None:
    """Each judge's figures on the real replies' frozen test split into the package's judge_measured.json (what
    reports print beside a judge's name); judges measured earlier and not in this run are kept."""
    from safeneuron_plugins.evaluate.judges.accuracy import MEASURED
    from safeneuron_plugins.files import atomic_write

    rows = [r for r in results if r["set"] == "real" and r["split"] == "test"]
    if not rows:
        return
    try:
        known = json.loads(MEASURED.read_text(encoding="utf-8"))["judges"]
    except (OSError, ValueError, KeyError):
        known = {}
    for r in rows:
        known[r["judge"]] = {k: r[k] for k in ("n", "accuracy", "success_accuracy", "false_success", "missed_success",
                                               "seconds_per_reply")}
    atomic_write(MEASURED, (json.dumps({"set": "judge_real.jsonl", "split": "test", "command": "bench/judges.py",
                                        "judges": known}, indent=1, sort_keys=True) + "\n").encode())
    print(f"wrote {MEASURED}")


if __name__ == "__main__":
    main()
