"""Showing lm-evaluation-harness scores (:func:`.lm_eval_capability.lm_eval_scores`' result): the plain-text
table of ``safeneuron capability`` and the "Capability (lm-evaluation-harness)" section of compare's report."""

from __future__ import annotations

from typing import Any


def score_rows(scores: dict[str, Any]) -> list[tuple[str, str, float | None, float | None, int | None]]:
    """(task, metric, value, stderr, n) for every task and group metric."""
    rows = []
    for name, task in scores.get("tasks", {}).items():
        for metric, m in task["metrics"].items():
            rows.append((name, metric, m["value"], m["stderr"], task.get("n")))
    for name, group in scores.get("groups", {}).items():
        for metric, m in group["metrics"].items():
            rows.append((name, metric, m["value"], m["stderr"], None))
    return rows



def format_score(value: float | None, stderr: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f} ± {stderr:.3f}" if stderr is not None else f"{value:.3f}"



def format_scores(scores: dict[str, Any], title: str = "") -> str:
    """A plain-text table of :func:`lm_eval_scores`' result."""
    rows = score_rows(scores)
    lines = [title] if title else []
    width = max([len(f"{t} {m}") for t, m, *_ in rows] + [10])
    for task, metric, value, stderr, n in rows:
        lines.append(f"  {f'{task} {metric}':<{width}}  {format_score(value, stderr):>15}"
                     + (f"  (n={n})" if n is not None else ""))
    return "\n".join(lines)



def report_table(models: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """compare's table: one row per model, one column per task metric (``value ± stderr``); a model scored
    also under its FULL(SN-) mask (``lm_eval_full``) gets a second row. Empty when no model has scores."""
    columns: list[tuple[str, str]] = []
    for m in models.values():
        for key in ("lm_eval", "lm_eval_full"):
            for task, metric, *_ in score_rows(m.get(key) or {}):
                if (task, metric) not in columns:
                    columns.append((task, metric))
    if not columns:
        return [], []
    head = ["model", "pruned", *(f"{t} {m}" for t, m in columns), "n"]
    body = []
    for name, m in models.items():
        for key, label in (("lm_eval", "nothing (ORI)"), ("lm_eval_full", "FULL(SN-)")):
            scores = m.get(key)
            if not scores:
                continue
            found = {(t, mt): (v, s, n) for t, mt, v, s, n in score_rows(scores)}
            ns = sorted({str(n) for _, _, _, _, n in score_rows(scores) if n is not None})
            if key == "lm_eval_full":
                label = f"FULL(SN-), {scores.get('pruned_neurons', 0)} neurons"
            body.append([name, label, *(format_score(*found[c][:2]) if c in found else "" for c in columns),
                         "/".join(ns)])
    return head, body



def report_intro(models: dict[str, dict[str, Any]]) -> str:
    scored = [m.get("lm_eval") or m.get("lm_eval_full") for m in models.values()]
    scored = [s for s in scored if s]
    if not scored:
        return ""
    first = scored[0]
    shots = first.get("num_fewshot")
    limit = f", at most {first['limit']}" if first.get("limit") else ""
    fewshot = "each task's own few-shot setting" if shots is None else f"{shots}-shot"
    return (f"Scored by lm-evaluation-harness {first['lm_eval_version']} in this process (value ± lm_eval's "
            f"standard error; n documents per task{limit}; {fewshot}). \"FULL(SN-)\": with the model's safety "
            "neurons (the attack's FULL(SN-) mask) pruned: capability under the pruning attack.")



def report_section(models: dict[str, dict[str, Any]], fmt: str = "md") -> str:
    """compare's "Capability (lm-evaluation-harness)" section, Markdown or HTML; "" when nothing was scored."""
    import html

    head, body = report_table(models)
    if not body:
        return ""
    intro = report_intro(models)
    if fmt == "html":
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        return (f"<h2>Capability (lm-evaluation-harness)</h2><p>{html.escape(intro)}</p>"
                f"<table border=1 cellpadding=4><tr>{cells}</tr>{rows}</table>")
    table = "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                      + ["| " + " | ".join(r) + " |" for r in body])
    return f"## Capability (lm-evaluation-harness)\n\n{intro}\n\n{table}\n\n"
