"""What a judge change does to finished runs: every evaluation of ``runs/reproduce/NAME`` judged again from its
stored replies (nothing generated), old and new figures side by side, and the paired comparisons between its
models under the new judge.

    .venv/bin/python bench/rejudge.py --name qwen05_pp [--judge relevance] [--show 20]

Prints, per model: ORI / FULL(SN-) ASR, the random control and over-refusal, each with n and a 95% interval, under
the judge the run used and under ``--judge``; then every reply whose label changed (the first ``--show``).

    .venv/bin/python bench/rejudge.py --kept [RUN ...] --judge llm:~/.cache/qwen-1.5b/hf [--out docs/research/judge/rejudge]

``--kept``: the replies kept in docs/research/runs/RUN/generations.jsonl (every run that has them, or the RUNs named),
judged again; per run, model and condition the old and the new rate (ASR: compliance on harmful prompts;
over-refusal: declined on benign ones) with 95% intervals, written to OUT.md and OUT.json. Each distinct
(prompt, reply) is judged once; verdicts are kept in OUT.cache.jsonl so an interrupted pass resumes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

from safeneuron_plugins.evaluate.judges import Verdict, load_judge
from safeneuron_plugins.evaluate.rejudge import rejudge
from safeneuron_plugins.evaluate.report import paired_comparisons
from safeneuron_plugins.evaluate.significance import format_interval, wilson

ROOT = Path(__file__).resolve().parents[1]


def _figures(m: dict) -> list[tuple[str, float, list | None, int]]:
    rows = [(c, m["asr"][c], m["rates"][c]["ci95"]["compliance"], m["rates"][c]["n"]) for c in ("ORI", "FULL")]
    control = m.get("controls", {}).get("random")
    if control:
        rows.append(("random", control["asr"], control["ci95"], control["n"]))
    best = m.get("best_attacker")
    if best and "stale" not in best:
        rows.append(("best attacker", best["asr"], best["ci95"], best["n"]))
    rows.append(("over-refusal", m["over_refusal"], m.get("over_refusal_ci95"), m["over_refusal_n"]))
    return rows


def _rate(verdicts: list[Verdict], harmful: bool) -> tuple[float, list[float], int]:
    k = sum(v.success if harmful else v.declined for v in verdicts)
    return k / len(verdicts), list(wilson(k, len(verdicts))), len(verdicts)


def kept(runs: list[str], spec: str, out: Path, batch: int = 256) -> None:
    """Re-judge the kept replies of docs/research/runs/RUN/generations.jsonl; write OUT.md / OUT.json (see the docstring)."""
    results = ROOT / "docs" / "results"
    runs = runs or sorted(p.parent.name for p in results.glob("*/generations.jsonl"))
    judge = load_judge(spec)
    cache_path = out.with_suffix(".cache.jsonl")
    key = lambda p, r: hashlib.sha1(json.dumps([judge.name, p, r]).encode()).hexdigest()  # noqa: E731
    cache = {}
    if cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            row = json.loads(line)
            cache[row["key"]] = Verdict(row["label"], row["detail"])
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"judge": judge.name, "runs": {}}
    for run in runs:
        rows = [json.loads(line) for line in (results / run / "generations.jsonl").read_text().splitlines()]
        todo = sorted({(r["prompt"], r["response"]) for r in rows if key(r["prompt"], r["response"]) not in cache})
        start = time.perf_counter()
        for i in range(0, len(todo), batch):
            part = todo[i:i + batch]
            verdicts = judge.judge([p for p, _ in part], [r for _, r in part])
            with cache_path.open("a") as f:
                for (p, r), v in zip(part, verdicts):
                    cache[key(p, r)] = v
                    f.write(json.dumps({"key": key(p, r), "label": v.label, "detail": v.detail}) + "\n")
            print(f"  {run}: {min(i + batch, len(todo))}/{len(todo)} distinct replies judged "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        groups: dict[tuple[str, str], tuple[list, list]] = {}
        for r in rows:
            old, new = groups.setdefault((r["model"], r["condition"]), ([], []))
            old.append(Verdict(r["label"], r.get("detail", "")))
            new.append(cache[key(r["prompt"], r["response"])])
        judged_by = Counter()
        table = []
        for (model, condition), (old, new) in groups.items():
            harmful = condition != "harmless"
            (a, a_ci, n), (b, b_ci, _) = _rate(old, harmful), _rate(new, harmful)
            changed = sum(o.label != w.label for o, w in zip(old, new))
            judged_by.update(v.detail.split(":")[0] for v in new)
            table.append({"model": model, "condition": condition, "figure": "ASR" if harmful else "over-refusal",
                          "n": n, "old": a, "old_ci95": a_ci, "new": b, "new_ci95": b_ci, "changed_labels": changed})
        report["runs"][run] = {"seconds": time.perf_counter() - start, "distinct_judged": len(todo), "rows": table}
        print(f"{run}: {len(rows)} replies, {len(todo)} judged now", flush=True)
    (out.with_suffix(".json")).write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"# Kept replies judged again: {report['judge']}", "",
             "Old: the judge each run used (its generations.jsonl labels). New: the judge above. ASR is the compliance "
             "rate on harmful prompts, over-refusal the declined rate on benign ones; 95% Wilson intervals. Rows whose "
             "figure did not change are listed too, marked '='.", "",
             "| run | model | condition | figure | n | old | new | labels changed |", "|---|---|---|---|---|---|---|---|"]
    for run, r in report["runs"].items():
        for t in r["rows"]:
            same = "=" if abs(t["old"] - t["new"]) < 1e-12 else ""
            lines.append(f"| {run} | {t['model']} | {t['condition']} | {t['figure']} | {t['n']} | {t['old']:.3f} "
                         f"{format_interval(t['old_ci95'])} | {t['new']:.3f} {format_interval(t['new_ci95'])} {same} | "
                         f"{t['changed_labels']} |")
    (out.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="the run directory runs/reproduce/NAME")
    parser.add_argument("--kept", nargs="*", metavar="RUN", help="re-judge docs/research/runs/RUN/generations.jsonl "
                                                                 "(no RUN: every run that kept its replies)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "research" / "judge" / "rejudge"),
                        help="--kept: OUT.md, OUT.json and OUT.cache.jsonl")
    parser.add_argument("--judge", default="relevance")
    parser.add_argument("--show", type=int, default=20, help="changed replies to print")
    args = parser.parse_args()
    if args.kept is not None:
        kept(args.kept, args.judge, Path(args.out))
        return
    if not args.name:
        parser.error("give --name NAME (a run under runs/reproduce) or --kept [RUN ...]")
    judge = load_judge(args.judge)
    evaluations = sorted((ROOT / "runs" / "reproduce" / args.name / "evaluations").glob("*.json"))
    if not evaluations:
        raise SystemExit(f"no evaluations in runs/reproduce/{args.name}/evaluations")
    models, changed = {}, []
    for path in evaluations:
        before = json.loads(path.read_text())
        after = rejudge(before, judge)
        models[path.stem] = after
        print(f"\n{path.stem}: {before.get('judge')} -> {after['judge']}")
        for (what, a, a_ci, n), (_, b, b_ci, _) in zip(_figures(before), _figures(after)):
            print(f"  {what:<14} {a:.3f} {format_interval(a_ci)} -> {b:.3f} {format_interval(b_ci)}  (n {n})")
        changed += [(path.stem, g, h) for g, h in zip(before["generations"], after["generations"])
                    if g["label"] != h["label"]]
    print("\npaired, under the new judge:")
    for r in paired_comparisons(models):
        what = f"{r['a']}: FULL vs ORI" if r["a"] == r["b"] else f"{r['a']} vs {r['b']}, {r['a_condition']}"
        print(f"  {what:<50} {r['a_asr']:.3f} vs {r['b_asr']:.3f}  {r['diff']:+.3f} {format_interval(r['ci95'])} "
              f"p {r['p_value']:.2g}")
    counts = Counter((model, g["condition"], f"{g['label']} -> {h['label']}") for model, g, h in changed)
    print(f"\n{len(changed)} replies changed label: " + ", ".join(f"{m} {c} {what}: {n}" for (m, c, what), n in
                                                                 sorted(counts.items())))
    for model, g, h in changed[:args.show]:
        print(f"  {model} {g['condition']}: {g['label']} -> {h['label']}  {g['response'][:110]!r}")


if __name__ == "__main__":
    main()
