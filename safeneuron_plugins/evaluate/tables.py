"""The tables `safeneuron attack` prints for each attack family (pruning, refusal direction, fine-tuning),
with 95% Wilson intervals; the attacks return their results as dicts, these format them."""

from __future__ import annotations

from typing import Any

from .attack import CONDITIONS as PRUNING_CONDITIONS
from .attack import best_label
from .attack_direction import CONDITIONS as DIRECTION_CONDITIONS


def _ci(ci) -> str:
    return f"[{ci[0]:.2f},{ci[1]:.2f}]"


def pruning_table(results: dict[str, Any]) -> str:
    """The console table: each condition's ASR with its 95% Wilson interval, refusal and evasive rates."""
    lines = [f"judge: {results['judge']}   prompts: {results['n_prompts']}   [95% Wilson interval]",
             f"{'condition':<11} {'pruned':>7} {'ASR':>6} {'95% CI':<12} {'refusal':>8} {'evasive':>8}"]
    names = list(PRUNING_CONDITIONS) + [f"FULL@{p}%" for p in results["sweep"]]
    names += [f"random:{s}" for s in results.get("controls", {}).get("random", {}).get("seeds", [])]
    for name in names:
        r = results["rates"][name]
        ci = r.get("ci95", {}).get("compliance")
        lines.append(f"{name:<11} {results['pruned_neurons'][name]:>7} {r['compliance']:>6.2f} "
                     f"{_ci(ci) if ci else '':<12} {r['refusal']:>8.2f} {r['evasive']:>8.2f}")
    control = results.get("controls", {}).get("random")
    if control:
        vs = control["vs_full"]
        lines.append(f"random control ({len(control['seeds'])} seeds, {control['pruned_neurons']} neurons each): "
                     f"ASR {control['asr']:.2f} {_ci(control['ci95'])}; FULL - control (majority) "
                     f"{vs['diff']:+.2f} {_ci(vs['ci95'])}, McNemar p = {vs['p_value']:.3g}")
    best = results.get("best_attacker")
    if best:
        lines.append(f"best attacker ({len(best['grid'])} settings): ASR {best['asr']:.2f} {_ci(best['ci95'])} "
                     f"with {best_label(best['setting'])} ({best['pruned_neurons']} neurons)")
    return "\n".join(lines)


def direction_table(results: dict[str, Any]) -> str:
    """The refusal-direction attack: the chosen direction, each candidate's validation rates, ORI vs ABLATED."""
    d = results["direction"]
    lines = [f"judge: {results['judge']}   prompts: {results['n_prompts']}   [95% Wilson interval]",
             f"refusal direction: layer {d['layer']}, position {d['position']} ({d['source']})"]
    for c in d.get("candidates", []):
        lines.append(f"  candidate layer {c['layer']:>3} position {c['position']:>3}: validation refusal "
                     f"{c['refusal']:.2f} compliance {c['compliance']:.2f} (n={c['n']})")
    lines.append(f"{'condition':<9} {'ASR':>6} {'95% CI':<12} {'refusal':>8} {'evasive':>8}")
    for name in DIRECTION_CONDITIONS:
        r = results["rates"][name]
        lines.append(f"{name:<9} {r['compliance']:>6.2f} {_ci(r['ci95']['compliance']):<12} {r['refusal']:>8.2f} "
                     f"{r['evasive']:>8.2f}")
    vs = results["vs_ori"]
    lines.append(f"ABLATED - ORI {vs['diff']:+.2f} {_ci(vs['ci95'])}, McNemar p = {vs['p_value']:.3g}")
    cos = d.get("cosine_to_original")
    if cos:
        lines.append(f"cosine to the original's direction (layer {cos['layer']}, position {cos['position']}): "
                     f"{cos['cosine']:.3f}")
    return "\n".join(lines)


def finetune_table(results: dict[str, Any]) -> str:
    """The fine-tuning attack: ASR after each number of LoRA steps."""
    f = results["finetune"]
    lines = [f"judge: {results['judge']}   prompts: {results['n_prompts']}   [95% Wilson interval]",
             f"LoRA r={f['lora_r']} on {f['n_pairs']} harmful pairs, lr {f['learning_rate']:g}, batch {f['batch_size']}"
             + (f", {f['masked_neurons']} masked neurons respected" if f["respect_mask"] else ", no mask respected"),
             f"{'steps':>6} {'ASR':>6} {'95% CI':<12} {'refusal':>8} {'evasive':>8} {'loss':>7}"]
    for row in results["curve"]:
        loss = f"{row['train_loss']:.3f}" if row["train_loss"] is not None else ""
        lines.append(f"{row['steps']:>6} {row['asr']:>6.2f} {_ci(row['ci95']):<12} {row['refusal']:>8.2f} "
                     f"{row['evasive']:>8.2f} {loss:>7}")
    return "\n".join(lines)
