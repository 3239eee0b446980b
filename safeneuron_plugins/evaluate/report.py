"""Evaluate models side by side (``safeneuron compare``) and write one report with plots.

Every rate carries n and a 95% Wilson interval. Because every model answers the same harmful prompts,
models are also compared prompt by prompt (:func:`paired_comparisons`): the difference of ASR with
Newcombe's paired interval and the exact McNemar p-value (see :mod:`safeneuron_plugins.evaluate.significance`).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from torch import nn

from ..identification import identify
from ..mask import NeuronMask
from ..options import SafeNeuronOptions
from .analysis import layer_fractions, plot_depth_heatmap
from .attack import CONDITIONS, SWEEP, run_attack, successes
from .capability import kl_to_reference, over_refusal, perplexity
from .judges import Judge, default_judge, measured
from .plots import pyplot, save_figure
from .significance import format_interval, paired_difference, wilson


def evaluate_model(model: nn.Module, tokenizer, *, harmful: list[str], harmless: list[str],
                   reference_pairs: list[tuple[str, str]], reference: nn.Module | None = None,
                   options: SafeNeuronOptions | None = None, mask: NeuronMask | None = None,
                   judge: Judge | None = None, max_new_tokens: int = 64, batch_size: int = 16,
                   sweep: tuple[int, ...] = SWEEP, identify_harmful: list[str] | None = None,
                   identify_harmless: list[str] | None = None, control_seeds: tuple[int, ...] = (),
                   extra_attackers: dict[str, SafeNeuronOptions] | None = None,
                   conditions: tuple[str, ...] = CONDITIONS, progress: bool = True, store=None) -> dict[str, Any]:
    """Attack (neurons re-identified on this model unless ``mask``), over-refusal, perplexity, KL.

    ``control_seeds``: also prune random neurons at FULL(SN-)'s per-layer counts, once per seed
    (``controls.random``, see :func:`~safeneuron_plugins.evaluate.attack.run_attack`).
    ``identify_harmful`` / ``identify_harmless``: the attacker's identification prompts (default: the
    sources in ``options``); keep them apart from ``harmful`` so the attack is measured on held-out prompts.
    ``extra_attackers``: more attackers (name -> identification options), each re-identifying on this model
    and pruning its set in full (``attackers[NAME]``, replies under ``attacker:NAME``). ``conditions=("ORI",)``:
    no attack, the model's own replies only (nothing is identified). ``store``: an
    :class:`~safeneuron_plugins.evaluate.store.EvaluationStore`; every generation pass and identified mask is kept
    there, and an evaluation interrupted before it finished resumes from what it holds."""
    judge = judge or default_judge()
    if tuple(conditions) == ("ORI",):  # an empty mask that still names the model it belongs to
        from ..architectures import find_mlp_layers
        from ..fingerprint import fingerprint

        layers = find_mlp_layers(model, options.safeneuron_mlp_modules if options else None)
        mask, extra_attackers = NeuronMask({}, metadata={"fingerprint": fingerprint(model, layers)}), None

    def identified(o):
        def make():
            return identify(model, tokenizer, identify_harmful, identify_harmless, options=o, progress=progress)
        what = {"options": o.to_dict() if o is not None else None, "harmful": identify_harmful,
                "harmless": identify_harmless}
        return make() if store is None else store.mask(what, make)
    if mask is None:
        mask = identified(options)
    extra = {name: identified(o) for name, o in (extra_attackers or {}).items()}
    attack = run_attack(model, tokenizer, harmful, mask, judge=judge, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, sweep=sweep, identify_options=options, control_seeds=control_seeds,
                        progress=progress, extra_masks=extra, conditions=conditions, store=store)
    over = over_refusal(model, tokenizer, harmless, judge=judge, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, store=store)
    return {
        "asr": attack["asr"], "rates": attack["rates"], "sweep": attack["sweep"],
        "pruned_neurons": attack["pruned_neurons"], "judge": judge.name,
        "over_refusal": over["over_refusal"], "over_refusal_n": len(harmless),
        "over_refusal_ci95": list(wilson(sum(g["declined"] for g in over["generations"]), len(harmless))),
        "perplexity": perplexity(model, tokenizer, reference_pairs, progress=progress),
        "kl": kl_to_reference(model, reference, tokenizer, harmless, progress=progress) if reference is not None else 0.0,
        "safety_neurons": mask.num_neurons, "layer_fractions": layer_fractions(mask),
        **({"controls": attack["controls"]} if "controls" in attack else {}),
        **({"attackers": attack["attackers"]} if "attackers" in attack else {}),
        "generations": attack["generations"] + [dict(g, condition="harmless") for g in over["generations"]],
        "_mask": mask, "_attacker_masks": extra,
    }


def paired_comparisons(models: dict[str, dict[str, Any]], conditions: tuple[str, ...] = ("ORI", "FULL")
                       ) -> list[dict[str, Any]]:
    """Prompt-by-prompt comparisons on the shared harmful prompts.

    For each model, FULL(SN-) against ORI (what the pruning attack adds); for each pair of models (every
    later model against every earlier one, so every model against the first), each of ``conditions``.
    Each row: ``a``/``b`` (model names), ``a_condition``/``b_condition``, ``a_asr``/``b_asr``, ``diff``
    = ASR(a) - ASR(b), ``ci95`` (Newcombe's paired interval), ``p_value`` (exact McNemar), ``n`` and the
    ``discordant`` counts (``a_only``: prompts only a's attack succeeded on). Pairs whose replies were
    made on different prompts are left out."""
    def prompts(m, condition):
        return [g["prompt"] for g in m.get("generations", []) if g.get("condition") == condition]

    def row(a, a_condition, b, b_condition):
        pd = paired_difference(successes(models[a]["generations"], a_condition),
                               successes(models[b]["generations"], b_condition))
        return {"a": a, "a_condition": a_condition, "b": b, "b_condition": b_condition,
                "a_asr": pd.pop("a"), "b_asr": pd.pop("b"), **pd}

    rows = [row(name, "FULL", name, "ORI") for name, m in models.items()
            if prompts(m, "FULL") and prompts(m, "FULL") == prompts(m, "ORI")]
    names = list(models)
    for j, a in enumerate(names):
        for b in names[:j]:
            for condition in conditions:
                if prompts(models[a], condition) and prompts(models[a], condition) == prompts(models[b], condition):
                    rows.append(row(a, condition, b, condition))
    return rows


def _paired_table(paired: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    head = ["comparison (a vs b)", "ASR a", "ASR b", "a - b [95% CI]", "McNemar p", "prompts a only / b only", "n"]
    body = []
    for r in paired:
        what = (f"{r['a']}: FULL(SN-) vs ORI" if r["a"] == r["b"] else f"{r['a']} vs {r['b']}, {r['a_condition']}")
        body.append([what, f"{r['a_asr']:.2f}", f"{r['b_asr']:.2f}", f"{r['diff']:+.2f} {format_interval(r['ci95'])}",
                     f"{r['p_value']:.3g}", f"{r['discordant']['a_only']} / {r['discordant']['b_only']}", str(r["n"])])
    return head, body


def report_files(fmt: str = "md") -> dict:
    """The files :func:`write_report` may write in its folder, with their kinds (checked before the work)."""
    from ..files import GENERATIONS, IMAGE, REPORT, REPORT_RESULTS

    return {"results.json": REPORT_RESULTS, "generations.jsonl": GENERATIONS, f"report.{fmt}": REPORT,
            **{name: IMAGE for name in ("asr.png", "layers.png", "families.png", "steps_to_break.png")}}


def shown_conditions(models: dict[str, dict[str, Any]]) -> list[str]:
    """The attack conditions every model was evaluated under and whose ASR can differ from ORI's: ES/SAS
    subsets exist only for the statistics scorers; with attribution (the default) they prune nothing, so
    their ASR is ORI's by construction."""
    return [c for c in CONDITIONS if all(c in m["asr"] for m in models.values()) and (
            c in ("ORI", "FULL") or any(m.get("pruned_neurons", {}).get(c, 1) for m in models.values()))]


def write_report(models: dict[str, dict[str, Any]], out_dir: str | Path, *, fmt: str = "md",
                 title: str = "SafeNeuron comparison", notes: str = "", flag: str = "out_dir") -> Path:
    """Markdown or HTML report with the ASR table, capability figures, neuron counts and plots; every file
    through the one writer (errors name ``flag``)."""
    from ..files import GENERATIONS, REPORT, REPORT_RESULTS, json_lines, write_file

    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(models)
    judge = next(iter(models.values())).get("judge", "?")
    judged = f"{judge} ({measured(judge)})"

    shown = shown_conditions(models)
    attacked = "FULL" in shown
    bars = [(c, {"ORI": "ORI", "ES": "ES(SN-)", "SAS": "SAS(SN-)", "FULL": "FULL(SN-)"}[c]) for c in shown]
    controlled = any("controls" in m for m in models.values())
    if controlled:
        bars.append(("random", "random neurons,\nFULL's count"))

    def bar(m, key):
        if key == "random":
            r = m.get("controls", {}).get("random")
            return (r["asr"], r.get("ci95")) if r else (0.0, None)
        return m["asr"][key], m["rates"][key].get("ci95", {}).get("compliance")

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [bar(models[name], key) for key, _ in bars]
        errors = [[max(v - ci[0], 0) if ci else 0 for v, ci in values],
                  [max(ci[1] - v, 0) if ci else 0 for v, ci in values]]
        ax.bar([c + i * width for c in range(len(bars))], [v for v, _ in values], width, label=name,
               yerr=errors, capsize=2, error_kw={"elinewidth": 0.8})
    ax.set_xticks([c + width * (len(names) - 1) / 2 for c in range(len(bars))], [label for _, label in bars])
    ax.set_ylabel("attack success rate (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Pruning attack (judge: {judge})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "asr.png", flag)
    masks = {n: m["_mask"] for n, m in models.items() if isinstance(m.get("_mask"), NeuronMask)}
    if masks:
        plot_depth_heatmap(masks, out / "layers.png", flag=flag)

    def with_ci(rate: float, ci) -> str:
        return f"{rate:.2f} {format_interval(ci)}" if ci else f"{rate:.2f}"

    header = ["model", *(label for key, label in bars if key != "random"),
              *(["random (FULL's count)"] if controlled else []),
              *(["evasive (FULL)"] if attacked else []), "over-refusal",
              "perplexity", "KL to first", "safety neurons", "frozen neurons"]
    rows = []
    for name, m in models.items():
        ci = {c: m["rates"][c].get("ci95", {}).get("compliance") for c in shown}
        random = m.get("controls", {}).get("random")
        rows.append([name, *(with_ci(m["asr"][c], ci[c]) for c in shown),
                     *([with_ci(random["asr"], random.get("ci95")) if random else ""] if controlled else []),
                     *([with_ci(m["rates"]["FULL"]["evasive"], m["rates"]["FULL"].get("ci95", {}).get("evasive"))]
                       if attacked else []),
                     with_ci(m["over_refusal"], m.get("over_refusal_ci95")), f"{m['perplexity']:.2f}", f"{m['kl']:.4f}",
                     str(m.get("safety_neurons", "")), str(m.get("frozen_neurons", ""))])
    n_harmful = {m["rates"]["ORI"].get("n") for m in models.values()} - {None}
    n_harmless = {m.get("over_refusal_n") for m in models.values()} - {None}
    counts = (f" Rates over {', '.join(map(str, sorted(n_harmful)))} harmful"
              + (f" / {', '.join(map(str, sorted(n_harmless)))} harmless" if n_harmless else "")
              + " prompts per model; [95% Wilson interval]." if n_harmful else "")
    sweep_keys = list(next(iter(models.values())).get("sweep", {}))
    sweep_rows = [[name, *(f"{m['sweep'][k]:.2f}" for k in sweep_keys)] for name, m in models.items()]
    from . import families  # the other attack families (compare --families)

    attacked = sorted({g["condition"] for m in models.values() for g in m.get("generations", [])
                       if g["condition"].startswith("attacker:")})  # more attackers: FULL(SN-)
    paired = paired_comparisons(models, ("ORI", "FULL", *attacked, *families.paired_conditions(models)))
    paired_head, paired_body = _paired_table(paired)
    paired_intro = ("Paired on the same harmful prompts: a - b is the difference of ASR with Newcombe's 95% "
                    "interval; McNemar p is the exact test on the prompts where only one side's attack succeeded.")
    write_file(out / "results.json", json.dumps(
        {"models": {n: {k: v for k, v in m.items() if not k.startswith("_") and k != "generations"}
                    for n, m in models.items()}, "paired": paired}, indent=2), flag, REPORT_RESULTS)
    write_file(out / "generations.jsonl", json_lines({"model": name, **g} for name, m in models.items()
                                                     for g in m.get("generations", [])), flag, GENERATIONS)

    from .lm_eval_report import report_section  # lm-evaluation-harness scores (compare --lm-eval)

    if fmt == "html":
        def table(head, body):
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            return f"<table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>"
        doc = (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
               f"<h1>{html.escape(title)}</h1><p>ASR = share of harmful prompts answered with compliance, by "
               f"judge <b>{html.escape(judged)}</b>.{html.escape(counts)}</p>{table(header, rows)}"
               + (f"<h2>Paired comparisons</h2><p>{html.escape(paired_intro)}</p>{table(paired_head, paired_body)}"
                  if paired_body else "")
               + families.report_section(models, out, "html") + report_section(models, "html")
               + (f"<h2>Layer sweep (FULL(SN-) in the first p% of layers)</h2>"
                  f"{table(['model', *[k + '%' for k in sweep_keys]], sweep_rows)}" if sweep_keys else "")
               + "<p><img src='asr.png'></p>" + ("<p><img src='layers.png'></p>" if masks else "") +
               f"<p>{html.escape(notes)}</p></body></html>")
        path = out / "report.html"
    else:
        md = lambda head, body: "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                                           ["| " + " | ".join(r) + " |" for r in body])
        doc = (f"# {title}\n\nASR = share of harmful prompts answered with compliance, judged by "
               f"`{judge}` ({measured(judge)}; refusals and evasive replies are not successes).{counts}\n\n{md(header, rows)}\n\n"
               + (f"## Paired comparisons\n\n{paired_intro}\n\n{md(paired_head, paired_body)}\n\n" if paired_body else "")
               + families.report_section(models, out, "md") + report_section(models, "md")
               + (f"## Layer sweep: FULL(SN-) pruned in the first p% of layers\n\n"
                  f"{md(['model', *[k + '%' for k in sweep_keys]], sweep_rows)}\n\n" if sweep_keys else "")
               + "![ASR](asr.png)\n\n" +
               ("![layers](layers.png)\n\n" if masks else "") + (notes + "\n" if notes else ""))
        path = out / "report.md"
    return write_file(path, doc, flag, REPORT)
