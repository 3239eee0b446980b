"""What a judge change does to finished runs: every evaluation of ``runs/reproduce/NAME`` judged again from its
stored replies (nothing generated), old and new figures side by side, and the paired comparisons between its
models under the new judge.

    .venv/bin/python bench/rejudge.py --name qwen05_pp [--judge relevance] [--show 20]

Prints, per model: ORI / FULL(SN-) ASR, the random control and over-refusal, each with n and a 95% interval, under
the judge the run used and under ``--judge``; then every reply whose label changed (the first ``--show``).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from safeneuron_plugins.evaluate.judges import load_judge
from safeneuron_plugins.evaluate.rejudge import rejudge
from safeneuron_plugins.evaluate.report import paired_comparisons
from safeneuron_plugins.evaluate.significance import format_interval

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="the run directory runs/reproduce/NAME")
    parser.add_argument("--judge", default="relevance")
    parser.add_argument("--show", type=int, default=20, help="changed replies to print")
    args = parser.parse_args()
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
