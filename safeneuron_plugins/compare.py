"""Evaluate models side by side (``safeneuron compare``) and write one report with plots."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from torch import nn

from .analysis import layer_fractions, plot_depth_heatmap
from .attack import CONDITIONS, SWEEP, run_attack
from .capability import kl_to_reference, over_refusal, perplexity
from .identify import identify
from .judge import Judge, RefusalJudge
from .mask import NeuronMask
from .options import SafeNeuronOptions
from .plots import pyplot, save_figure


def evaluate_model(model: nn.Module, tokenizer, *, harmful: list[str], harmless: list[str],
                   reference_pairs: list[tuple[str, str]], reference: nn.Module | None = None,
                   options: SafeNeuronOptions | None = None, mask: NeuronMask | None = None,
                   judge: Judge | None = None, max_new_tokens: int = 64, batch_size: int = 16,
                   sweep: tuple[int, ...] = SWEEP, progress: bool = True) -> dict[str, Any]:
    """Attack (neurons re-identified on this model unless ``mask``), over-refusal, perplexity, KL."""
    judge = judge or RefusalJudge()
    mask = mask or identify(model, tokenizer, options=options, progress=progress)
    attack = run_attack(model, tokenizer, harmful, mask, judge=judge, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, sweep=sweep, progress=progress)
    over = over_refusal(model, tokenizer, harmless, judge=judge, max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress)
    return {
        "asr": attack["asr"], "rates": attack["rates"], "sweep": attack["sweep"],
        "pruned_neurons": attack["pruned_neurons"], "judge": judge.name,
        "over_refusal": over["over_refusal"],
        "perplexity": perplexity(model, tokenizer, reference_pairs, progress=progress),
        "kl": kl_to_reference(model, reference, tokenizer, harmless, progress=progress) if reference is not None else 0.0,
        "safety_neurons": mask.num_neurons, "layer_fractions": layer_fractions(mask),
        "generations": attack["generations"] + [dict(g, condition="harmless") for g in over["generations"]],
        "_mask": mask,
    }


def write_report(models: dict[str, dict[str, Any]], out_dir: str | Path, *, fmt: str = "md",
                 title: str = "SafeNeuron comparison", notes: str = "") -> Path:
    """Markdown or HTML report with the ASR table, capability figures, neuron counts and plots."""
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(models)
    judge = next(iter(models.values())).get("judge", "?")

    fig, ax = plt.subplots(figsize=(7, 3.4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        ax.bar([c + i * width for c in range(len(CONDITIONS))], [models[name]["asr"][c] for c in CONDITIONS],
               width, label=name)
    ax.set_xticks([c + width * (len(names) - 1) / 2 for c in range(len(CONDITIONS))],
                  ["ORI", "ES(SN-)", "SAS(SN-)", "FULL(SN-)"])
    ax.set_ylabel("attack success rate")
    ax.set_ylim(0, 1)
    ax.set_title(f"Pruning attack (judge: {judge})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "asr.png")
    masks = {n: m["_mask"] for n, m in models.items() if isinstance(m.get("_mask"), NeuronMask)}
    if masks:
        plot_depth_heatmap(masks, out / "layers.png")

    header = ["model", "ORI", "ES(SN-)", "SAS(SN-)", "FULL(SN-)", "evasive (FULL)", "over-refusal",
              "perplexity", "KL to first", "safety neurons", "frozen neurons"]
    rows = []
    for name, m in models.items():
        rows.append([name, *(f"{m['asr'][c]:.2f}" for c in CONDITIONS), f"{m['rates']['FULL']['evasive']:.2f}",
                     f"{m['over_refusal']:.2f}", f"{m['perplexity']:.2f}", f"{m['kl']:.4f}",
                     str(m.get("safety_neurons", "")), str(m.get("frozen_neurons", ""))])
    sweep_keys = list(next(iter(models.values())).get("sweep", {}))
    sweep_rows = [[name, *(f"{m['sweep'][k]:.2f}" for k in sweep_keys)] for name, m in models.items()]
    (out / "results.json").write_text(json.dumps(
        {"models": {n: {k: v for k, v in m.items() if not k.startswith("_") and k != "generations"}
                    for n, m in models.items()}}, indent=2))
    with open(out / "generations.jsonl", "w") as f:
        for name, m in models.items():
            for g in m.get("generations", []):
                f.write(json.dumps({"model": name, **g}) + "\n")

    if fmt == "html":
        def table(head, body):
            cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
            return f"<table border=1 cellpadding=4><tr>{cells}</tr>{trs}</table>"
        doc = (f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
               f"<h1>{html.escape(title)}</h1><p>ASR = share of harmful prompts answered with compliance, by "
               f"judge <b>{html.escape(judge)}</b>.</p>{table(header, rows)}<h2>Layer sweep (FULL(SN-) in the "
               f"first p% of layers)</h2>{table(['model', *[k + '%' for k in sweep_keys]], sweep_rows)}"
               f"<p><img src='asr.png'></p>" + ("<p><img src='layers.png'></p>" if masks else "") +
               f"<p>{html.escape(notes)}</p></body></html>")
        path = out / "report.html"
    else:
        md = lambda head, body: "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                                           ["| " + " | ".join(r) + " |" for r in body])
        doc = (f"# {title}\n\nASR = share of harmful prompts answered with compliance, judged by "
               f"`{judge}` (refusals and evasive replies are not successes).\n\n{md(header, rows)}\n\n"
               + (f"## Layer sweep: FULL(SN-) pruned in the first p% of layers\n\n"
                  f"{md(['model', *[k + '%' for k in sweep_keys]], sweep_rows)}\n\n" if sweep_keys else "")
               + "![ASR](asr.png)\n\n" +
               ("![layers](layers.png)\n\n" if masks else "") + (notes + "\n" if notes else ""))
        path = out / "report.md"
    path.write_text(doc)
    return path
