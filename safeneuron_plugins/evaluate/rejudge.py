"""An evaluation judged again from its stored replies: nothing is generated, every figure that comes from
verdicts is recomputed (each condition's rates, ASR, the layer sweep, the random control, the best attacker,
over-refusal). Used when a run made with an older judge is resumed, and by ``bench/rejudge.py`` to show what a
judge change does to finished results."""

from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

from .attack import CONDITIONS, best_condition, best_of, control_summary, grid_row, rate_summary
from .judges import Judge
from .significance import wilson


def rejudge(evaluation: dict[str, Any], judge: Judge) -> dict[str, Any]:
    """A copy of ``evaluation`` (what :func:`~.report.evaluate_model` or :func:`~.attack.run_attack` returned, or
    its JSON) with every verdict given by ``judge``; ``rejudged_from`` names the judge it had."""
    out = copy.deepcopy(evaluation)
    rows = out.get("generations") or []
    if not rows:
        raise ValueError("rejudge: the evaluation holds no generations (replies) to judge again")
    verdicts = judge.judge([g.get("request") or g["prompt"] for g in rows], [g["response"] for g in rows])
    by_condition: dict[str, list] = defaultdict(list)
    for row, v in zip(rows, verdicts):
        row.update(label=v.label, detail=v.detail)
        row.update({"success": v.success} if row["condition"] != "harmless" else {"declined": v.declined})
        by_condition[row["condition"]].append(v)
    for name in out.get("rates", {}):
        out["rates"][name] = rate_summary(by_condition[name])
    for condition in CONDITIONS:
        if condition in out.get("asr", {}):
            out["asr"][condition] = out["rates"][condition]["compliance"]
    for percent in out.get("sweep", {}):
        out["sweep"][percent] = rate_summary(by_condition[f"FULL@{percent}%"])["compliance"]
    control = out.get("controls", {}).get("random")
    if control:
        wins = {seed: [v.success for v in by_condition[f"random:{seed}"]] for seed in control["seeds"]}
        out["controls"]["random"] = control_summary([v.success for v in by_condition["FULL"]], control["seeds"],
                                                    [wins[s] for s in control["seeds"]], control["pruned_neurons"])
    best = out.get("best_attacker")
    if best and all(by_condition[best_condition(r["setting"])] for r in best["grid"]):
        out["best_attacker"] = best_of([grid_row(r["setting"], by_condition[best_condition(r["setting"])],
                                                 r["pruned_neurons"]) for r in best["grid"]], best["n"])
    elif best:
        out["best_attacker"] = {**best, "stale": f"its replies are not stored: judged by {evaluation.get('judge')}"}
    harmless = by_condition.get("harmless")
    if harmless and "over_refusal" in out:
        declined = sum(v.declined for v in harmless)
        out.update(over_refusal=declined / len(harmless), over_refusal_ci95=list(wilson(declined, len(harmless))))
    out["rejudged_from"] = evaluation.get("judge")
    out["judge"] = judge.name
    return out
