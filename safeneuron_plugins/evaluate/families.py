"""The other attack families in ``safeneuron compare`` (``--families pruning,direction,finetune``).

Each model under comparison is attacked through the families' own Python APIs
(:func:`~safeneuron_plugins.evaluate.attack_direction.run_direction_attack`,
:func:`~safeneuron_plugins.evaluate.attack_finetune.run_finetune_attack`) on the same harmful prompts as the
pruning attack. The first model's refusal direction is the reference: every later model's direction is
compared with it by cosine at its layer and position (did training move the direction, or only hide it?).

Results go under ``families`` in each model's results (``families.direction``, ``families.finetune``: the
attacks' results without their generations); generations are kept under the conditions ``direction:ORI``,
``direction:ABLATED`` and ``finetune@k``. :func:`report_section` writes the report's tables (every rate with
n and its 95% Wilson interval) and plots (``families.png``: ASR per family per model with error bars;
``steps_to_break.png``: the fine-tuning curve).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .judges import Judge
from .plots import finish_rate_figure, pyplot, rate_bars
from .significance import format_interval

FAMILIES = ("pruning", "direction", "finetune")


@dataclass
class FamilySettings:
    """What ``compare`` runs beside the pruning attack, and the families' knobs (the attack CLI's defaults).

    ``layers``: candidate layers (None: the default few, ``"all"``: every layer); ``positions``: negative
    offsets from the end of the templated prompt, or ``"all"`` post-instruction positions."""

    families: tuple[str, ...] = ("pruning",)
    direction_harmful: list[str] = field(default_factory=list)
    direction_harmless: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    layers: list[int] | str | None = None
    positions: list[int] | str = (-1,)
    validation_tokens: int = 16
    pairs: Sequence[Mapping[str, str]] = ()
    steps: Sequence[int] = (0, 5, 10, 20)
    learning_rate: float = 2e-4
    batch_size: int = 4
    lora_r: int = 8
    seed: int = 0


def run_families(model: nn.Module, tokenizer, harmful: list[str], settings: FamilySettings, *, judge: Judge,
                 original: Any = None, max_new_tokens: int = 64, batch_size: int = 16,
                 system_prompt: str | None = None, max_length: int = 256, mlp_modules: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run every family of ``settings`` but pruning on the model. ``original``: the reference (first)
    model's :class:`~safeneuron_plugins.evaluate.direction_file.RefusalDirection` (None for the first model).

    Returns ``{"families": {name: results without generations}, "generations": [...], "_direction": the
    direction ablated (or None)}``."""
    from .attack_direction import resolve_candidates, run_direction_attack
    from .attack_finetune import run_finetune_attack

    common = dict(judge=judge, max_new_tokens=max_new_tokens, system_prompt=system_prompt, max_length=max_length,
                  mlp_modules=mlp_modules, progress=progress)
    out: dict[str, Any] = {"families": {}, "generations": [], "_direction": None}
    if "direction" in settings.families:
        s = settings
        layers, positions = resolve_candidates(model, tokenizer, s.layers, s.positions, system_prompt=system_prompt,
                                               mlp_modules=mlp_modules)
        res = run_direction_attack(model, tokenizer, harmful, direction_harmful=s.direction_harmful,
                                   direction_harmless=s.direction_harmless, validation=s.validation,
                                   original=original, layers=layers, positions=positions,
                                   validation_tokens=s.validation_tokens, batch_size=batch_size, **common)
        out["_direction"] = res.pop("_direction")
        out["generations"] += [dict(g, condition=f"direction:{g['condition']}") for g in res.pop("generations")]
        out["families"]["direction"] = res
    if "finetune" in settings.families:
        s = settings
        res = run_finetune_attack(model, tokenizer, harmful, s.pairs, steps=s.steps, learning_rate=s.learning_rate,
                                  batch_size=s.batch_size, lora_r=s.lora_r, seed=s.seed, gen_batch_size=batch_size,
                                  **common)
        out["generations"] += res.pop("generations")
        out["families"]["finetune"] = res
    return out


def paired_conditions(models: Mapping[str, Mapping[str, Any]]) -> tuple[str, ...]:
    """The family conditions every model was attacked under (for compare's model-vs-model paired rows)."""
    conditions = None
    for m in models.values():
        fam = m.get("families", {})
        mine = ({"direction:ABLATED"} if "direction" in fam else set()) | {
            f"finetune@{row['steps']}" for row in fam.get("finetune", {}).get("curve", []) if row["steps"] > 0}
        conditions = mine if conditions is None else conditions & mine
    return tuple(sorted(conditions or (), key=lambda c: (not c.startswith("direction"), len(c), c)))


def _cell(rate: float, ci) -> str:
    return f"{rate:.2f} {format_interval(ci)}"


def _rate(m: Mapping[str, Any], where: str) -> tuple[float, list[float]] | None:
    """(ASR, 95% interval) of one family condition: ``pruning:ORI``, ``pruning:FULL``, ``direction:ABLATED``,
    ``finetune@last``."""
    fam = m.get("families", {})
    if where.startswith("pruning:"):
        r = m["rates"][where.split(":")[1]]
        return r["compliance"], r["ci95"]["compliance"]
    if where == "direction:ABLATED" and "direction" in fam:
        r = fam["direction"]["rates"]["ABLATED"]
        return r["compliance"], r["ci95"]["compliance"]
    if where == "finetune@last" and fam.get("finetune", {}).get("curve"):
        row = fam["finetune"]["curve"][-1]
        return row["asr"], row["ci95"]
    return None


def tables(models: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, list[str], list[list[str]]]]:
    """(title, intro, header, rows) of each table of the section; empty when only pruning ran."""
    ran = [n for n, m in models.items() if m.get("families")]
    if not ran:
        return []
    first = next(iter(models))
    out = []
    last_k = {n: models[n]["families"]["finetune"]["curve"][-1]["steps"] for n in ran
              if models[n]["families"].get("finetune", {}).get("curve")}
    columns = [("pruning:ORI", "no attack (ORI)"), ("pruning:FULL", "pruning FULL(SN-)")]
    if any("direction" in models[n]["families"] for n in ran):
        columns.append(("direction:ABLATED", "direction ablated"))
    if last_k:
        columns.append(("finetune@last", f"fine-tuned, {'/'.join(sorted(set(map(str, last_k.values()))))} steps"))
    summary = [[n, *(_cell(*r) if (r := _rate(models[n], key)) else "" for key, _ in columns),
                str(models[n]["rates"]["ORI"]["n"])] for n in models]
    out.append(("Attack families side by side", "ASR of each model under each family's attack (the last "
                "fine-tuning step for the fine-tuning attack), every rate with its 95% Wilson interval.",
                ["model", *(label for _, label in columns), "n"], summary))
    directed = [n for n in ran if "direction" in models[n]["families"]]
    if directed:
        rows = []
        for n in directed:
            d = models[n]["families"]["direction"]
            info, vs = d["direction"], d["vs_ori"]
            cos = info.get("cosine_to_original")
            rows.append([n, _cell(d["rates"]["ORI"]["compliance"], d["rates"]["ORI"]["ci95"]["compliance"]),
                         _cell(d["rates"]["ABLATED"]["compliance"], d["rates"]["ABLATED"]["ci95"]["compliance"]),
                         f"{vs['diff']:+.2f} {format_interval(vs['ci95'])}", f"{vs['p_value']:.3g}",
                         f"{info['layer']} / {info['position']}",
                         f"{cos['cosine']:.3f} (layer {cos['layer']}, position {cos['position']})" if cos
                         else ("reference" if n == first else ""), str(d["rates"]["ABLATED"]["n"])])
        out.append(("Refusal-direction ablation", f"The difference of mean residual streams (harmful - harmless) at "
                    f"the post-instruction positions, projected out of every layer's output while generating; "
                    f"ABLATED - ORI is paired on the same prompts (Newcombe's interval, exact McNemar p). Cosine: this "
                    f"model's direction against the first model's ({first}) at that direction's layer and position.",
                    ["model", "ORI", "ABLATED", "ABLATED - ORI [95% CI]", "McNemar p", "layer / position",
                     "cosine to first model's direction", "n"], rows))
    tuned = [n for n in ran if models[n]["families"].get("finetune", {}).get("curve")]
    if tuned:
        ks = sorted({row["steps"] for n in tuned for row in models[n]["families"]["finetune"]["curve"]})
        rows = []
        for n in tuned:
            curve = {row["steps"]: row for row in models[n]["families"]["finetune"]["curve"]}
            rows.append([n, *(_cell(curve[k]["asr"], curve[k]["ci95"]) if k in curve else "" for k in ks),
                         str(next(iter(curve.values()))["n"])])
        f = models[tuned[0]]["families"]["finetune"]["finetune"]
        out.append(("Harmful fine-tuning: steps to break", f"ASR after k LoRA steps (r={f['lora_r']}, lr "
                    f"{f['learning_rate']:g}, batch {f['batch_size']}, on {f['n_pairs']} harmful pairs; the adapter "
                    "ignores any SafeNeuron mask); k = 0 is the untouched model.",
                    ["model", *(f"k={k}" for k in ks), "n"], rows))
    return out


def plot(models: Mapping[str, Mapping[str, Any]], out_dir: str | Path) -> list[str]:
    """``families.png`` (ASR per family per model, 95% intervals) and, with the fine-tuning attack,
    ``steps_to_break.png``; returns the file names written."""
    plt = pyplot()
    out, names, written = Path(out_dir), list(models), []
    keys = [("pruning:ORI", "no attack"), ("pruning:FULL", "pruning\nFULL(SN-)"),
            ("direction:ABLATED", "direction\nablated"), ("finetune@last", "fine-tuned\n(last k)")]
    keys = [(k, label) for k, label in keys if any(_rate(m, k) for m in models.values())]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    rate_bars(ax, [label for _, label in keys], {name: [_rate(models[name], k) for k, _ in keys] for name in names})
    finish_rate_figure(fig, ax, "Attack families", out / "families.png")
    written.append("families.png")
    tuned = {n: m["families"]["finetune"]["curve"] for n, m in models.items()
             if m.get("families", {}).get("finetune", {}).get("curve")}
    if tuned:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for name, curve in tuned.items():
            ks, asr = [r["steps"] for r in curve], [r["asr"] for r in curve]
            err = [[max(r["asr"] - r["ci95"][0], 0) for r in curve], [max(r["ci95"][1] - r["asr"], 0) for r in curve]]
            ax.errorbar(ks, asr, yerr=err, marker="o", capsize=3, label=name)
        ax.set_xlabel("LoRA fine-tuning steps on harmful pairs")
        finish_rate_figure(fig, ax, "Harmful fine-tuning: steps to break", out / "steps_to_break.png")
        written.append("steps_to_break.png")
    return written


def report_section(models: Mapping[str, Mapping[str, Any]], out_dir: str | Path, fmt: str = "md") -> str:
    """compare's "Attack families" section with its plots, Markdown or HTML; "" when only pruning ran."""
    parts = tables(models)
    if not parts:
        return ""
    images = plot(models, out_dir)
    if fmt == "html":
        def table(head, body):
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            return f"<table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>"
        return ("<h2>Attack families</h2>"
                + "".join(f"<h3>{html.escape(t)}</h3><p>{html.escape(i)}</p>{table(h, b)}" for t, i, h, b in parts)
                + "".join(f"<p><img src='{name}'></p>" for name in images))
    md = lambda head, body: "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # noqa: E731
                                      + ["| " + " | ".join(r) + " |" for r in body])
    return ("## Attack families\n\n" + "".join(f"### {t}\n\n{i}\n\n{md(h, b)}\n\n" for t, i, h, b in parts)
            + "".join(f"![{name[:-4]}]({name})\n\n" for name in images))
