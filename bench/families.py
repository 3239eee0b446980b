"""The three attack families on a reproduction's models: pruning, refusal-direction ablation, harmful fine-tuning.

Reads docs/research/runs/NAME.json (written by bench/reproduce.py: the models, their evaluation prompts, judge and
reply length, the pruning figures) and attacks every model kept under runs/reproduce/NAME/models (plus the
original) with the other two families through the `safeneuron attack` CLI, on the same held-out prompts:

- direction: the refusal direction selected on the model (identification prompts, the validation split held out
  of them), ablated from every layer's output; the cosine to the original model's direction at that layer;
- finetune: LoRA SFT on harmful prompt/response pairs (matched_pairs.jsonl's harmful half from ../shared/data,
  not seen by identification, training or evaluation), ASR after k optimizer steps;
- best (family `best`, pruning by a stronger attacker): re-identify on the model with every setting of a grid
  (scorer x signal x pooling x share of neurons), prune each set, keep the highest ASR
  (:func:`safeneuron_plugins.evaluate.attack.best_attacker`); its result is also written into NAME.json as
  each model's `best_attacker`. `--grid full` is the CLI's `--attacker best` grid (11 settings); the default
  `small` is 3 of them, each differing from the default attacker (attribution top 1%) in one way. It
  re-identifies on the run's identification prompts; on a machine without the run directory they are rebuilt
  from the results file's recorded config (``runs/families/NAME``), if their hashes match ``meta.split``.

    .venv/bin/python bench/families.py --name qwen05            # runs what is missing, then prints the table
    .venv/bin/python bench/families.py --name qwen05 --table     # the table only

One JSON per model and family in docs/research/runs/NAME_families/ (with its generations); a finished one is not
run again, so a cut-off run resumes where it stopped. Writes docs/research/runs/NAME_families.md (the table) and
NAME_families.png (ASR per family and model with 95% intervals).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "docs" / "research" / "runs"


def finetune_pairs(out: Path) -> Path:
    """matched_pairs.jsonl's harmful prompts with their harmful reference answers, as `prompt`/`response` rows."""
    src = SHARED / "matched_pairs.jsonl"
    if not src.exists():
        sys.exit(f"families: {src} is missing (the harmful fine-tuning pairs are built from it)")
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"prompt": r["harmful_prompt"], "response": r["harmful_answer"]}) + "\n"
                           for r in rows))
    return out


def rebuild_identification(results: dict, where: Path) -> Path | None:
    """The identification prompts of a results file, rebuilt from its recorded config by the split the run made
    them with (:func:`safeneuron_plugins.experiment.config.split_prompts`), for a machine that no longer holds
    the run directory: written to ``where``, or None unless both kinds' hashes are ``meta.split``'s."""
    from dataclasses import fields

    from safeneuron_plugins.errors import PromptSourceError
    from safeneuron_plugins.experiment.config import ExperimentConfig, split_prompts
    from safeneuron_plugins.identification.prompts import write_prompts

    known = {f.name for f in fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in results["meta"]["config"].items() if k in known})
    try:
        sets, split = split_prompts(cfg)
    except (PromptSourceError, OSError) as e:  # a prompt source not on this machine
        print(f"[families] the identification prompts cannot be rebuilt here: {e}", flush=True)
        return None
    kinds = ("harmful", "harmless")
    if any(split[f"identify_{k}"]["hash"] != results["meta"]["split"][f"identify_{k}"]["hash"] for k in kinds):
        print("[families] the identification prompts rebuilt from the recorded config are not the run's "
              "(another version of a prompt source?)", flush=True)
        return None
    where.mkdir(parents=True, exist_ok=True)
    for k in kinds:
        write_prompts(where / f"identify_{k}.jsonl", sets[f"identify_{k}"])
    return where


#: the figures that tell one trained model from another of the same name (a retrained twin's differ)
_IDENTITY = ("asr", "rates", "perplexity", "kl")
#: a twin trained again from the same start, data and seed on another CPU can differ from the first model only in
#: floating-point rounding: it is taken for the same model when every ASR and rate is equal, the attacker's
#: re-identified neurons are the same set, and perplexity and KL agree to this relative tolerance
_ROUNDING = 1e-4


def same_model(ours: dict, theirs: dict, our_mask: Path, their_mask: Path) -> bool:
    """Whether two evaluations of a model of one name are of the same model: identical figures, or (a retrained
    twin) identical ASR, rates and attacker neurons with perplexity and KL equal up to floating-point rounding."""
    if all(theirs.get(k) == ours.get(k) for k in _IDENTITY):
        return True
    if any(theirs.get(k) != ours.get(k) for k in ("asr", "rates")) or not (our_mask.is_file() and their_mask.is_file()):
        return False
    if not all(isinstance(ours.get(k), float) and isinstance(theirs.get(k), float)
               and math.isclose(ours[k], theirs[k], rel_tol=_ROUNDING) for k in ("perplexity", "kl")):
        return False
    from safeneuron_plugins import NeuronMask

    a, b = NeuronMask.load(our_mask), NeuronMask.load(their_mask)
    shape = lambda m: {k: m.fingerprint.get(k) for k in ("num_layers", "intermediate_size")}  # noqa: E731
    return a.cells() == b.cells() and shape(a) == shape(b)


def model_dirs(name: str, results: dict, wanted: list[str], runs: Path = ROOT / "runs" / "reproduce",
               results_dir: Path = RESULTS) -> dict[str, tuple[str, Path | None]]:
    """Each wanted model's directory, with the reproduction run directory whose identification prompts it goes
    with (``runs/reproduce/<run>``). A trained model is looked for under this run and, for one merged in from
    another run (``--merge-into``), under every run whose own results file (``results_dir/<run>.json``) holds
    the very figures this file has for it (``same_model``: a twin trained again on another CPU counts only if it
    differs by rounding alone); another model of the same name must not have its attack written into this row.
    A name kept under several such runs is refused. The original goes with any run whose identification
    prompts are this results file's (the same hash as ``meta.split``)."""
    from safeneuron_plugins.identification.prompts import load_prompts, prompts_hash

    def identify_hash(run: Path) -> str:  # as meta.split records it: the hash of the prompt texts
        return prompts_hash([p.text for p in load_prompts(str(run / "identify_harmful.jsonl"), min_prompts=1)])

    def evaluated_here(run: Path, model: str) -> bool:
        path = results_dir / f"{run.name}.json"
        theirs = json.loads(path.read_text())["models"].get(model) if path.is_file() else None
        return theirs is not None and same_model(results["models"].get(model, {}), theirs,
                                                 results_dir / name / "masks" / f"attacker_{model}.safetensors",
                                                 run / "evaluations" / f"{model}.safetensors")

    want = results["meta"]["split"]["identify_harmful"]["hash"]
    same = [d for d in sorted(runs.glob("*")) if (d / "identify_harmful.jsonl").is_file() and identify_hash(d) == want]
    if not same:  # no run of this set-up on this machine: the prompts from the recorded config
        rebuilt = rebuild_identification(results, runs.parent / "families" / name)
        same = [rebuilt] if rebuilt else []
    # the original (always: the direction attack's reference); its run only matters to the best attacker
    dirs: dict[str, tuple[str, Path | None]] = {"original": (results["meta"]["config"]["model"],
                                                             same[0] if same else None)}
    for model in wanted:
        if model == "original":
            continue
        own = runs / name / "models" / model
        if (own / "config.json").exists():
            kept = found = [own]
        else:  # merged in from another run
            kept = [p.parent for p in sorted(runs.glob(f"*/models/{model}/config.json"))]
            found = [p for p in kept if evaluated_here(p.parents[1], model)]
        if not found and kept:
            sys.exit(f"families: model {model} is kept under {', '.join(str(p) for p in kept)}, but its results file "
                     f"({', '.join(str(results_dir / (p.parents[1].name + '.json')) for p in kept)}) does not hold "
                     f"the figures {name}.json has for it: it is another model of the same name (trained again), "
                     f"and its attack would be written into the wrong row. Attack it under its own results file "
                     f"(--name {kept[0].parents[1].name}), or keep the model that {name}.json evaluated")
        if not found:
            sys.exit(f"families: {own} is missing: rerun bench/reproduce.py --recipe {name} --keep-models "
                     "(with --name and --merge-into for a variant merged in from another run)")
        if len(found) > 1:
            sys.exit(f"families: model {model} is kept under several runs ({', '.join(str(f) for f in found)}); "
                     "delete the ones that are not the results file's")
        dirs[model] = (str(found[0]), found[0].parents[1])
    return dirs


def attack_command(family: str, model: str, out: Path, cfg: dict, args, original: str, pairs: Path) -> list[str]:
    split = cfg["eval_harmful"]
    cmd = [sys.executable, "-m", "safeneuron_plugins.cli", "attack", model, "--family", family, "--out", str(out),
           "--harmful", split, "--limit", str(cfg["n_eval_harmful"]), "--judge", cfg["judge"],
           "--max-new-tokens", str(cfg["max_new_tokens"]), "--gen-batch-size", str(cfg["gen_batch_size"]),
           "--dtype", cfg.get("dtype") or "float32"]
    if family == "direction":
        cmd += ["--max-prompts", str(cfg["identify"].get("max_prompts", 128))]
        if model != original:
            cmd += ["--original", original]
    else:
        cmd += ["--finetune-data", str(pairs), "--finetune-steps", args.finetune_steps]
    return cmd


#: --grid small: 3 of the full grid's 11 settings, a stronger attacker at about a quarter of its cost: more
#: attribution neurons, and the paper's activation statistics with either signal (each at the top 5% of neurons)
SMALL_GRID = (
    {"method": "attribution", "neuron_ratio": 0.02, "ratio_scope": "global"},
    {"method": "safeneuron", "signal": "product", "pooling": "max", "neuron_ratio": 0.05, "ratio_scope": "global",
     "ratio_mode": "instead"},
    {"method": "safeneuron", "signal": "gate", "pooling": "mean", "neuron_ratio": 0.05, "ratio_scope": "global",
     "ratio_mode": "instead"},
)


def run_best(model_dir: str, run_dir: Path | None, out: Path, cfg: dict, grid_name: str) -> dict:
    """The best attacker on one model, on the reproduction's evaluation prompts and ``run_dir``'s identification
    prompts."""
    from safeneuron_plugins.evaluate.attack import BEST_ATTACKER_GRID, best_attacker
    from safeneuron_plugins.evaluate.judges import load_judge
    from safeneuron_plugins.identification.prompts import load_prompts
    from safeneuron_plugins.models import load_model
    from safeneuron_plugins.options import SafeNeuronOptions

    if run_dir is None:
        sys.exit("families: no run under runs/reproduce has the identification prompts of this results file, and "
                 "they cannot be rebuilt from its recorded config here (see above): rerun its bench/reproduce.py "
                 "command (or another run of the same set-up with --merge-into)")
    options = SafeNeuronOptions(safeneuron_harmful=str(run_dir / "identify_harmful.jsonl"),
                                safeneuron_harmless=str(run_dir / "identify_harmless.jsonl"))
    harmful = [p.text for p in load_prompts(cfg["eval_harmful"], kind="harmful", max_prompts=cfg["n_eval_harmful"])]
    model, tok = load_model(model_dir, dtype=cfg.get("dtype") or "float32")
    grid = BEST_ATTACKER_GRID if grid_name == "full" else SMALL_GRID
    judge = load_judge(cfg["judge"])
    result = best_attacker(model, tok, harmful, grid=grid, options=options, judge=judge,
                           max_new_tokens=cfg["max_new_tokens"], batch_size=cfg["gen_batch_size"])
    result["grid_name"] = grid_name
    result["judge"] = judge.name  # a file from before a judge change says which judge made it
    result["model_dir"] = model_dir  # which kept model was attacked (a retrained twin's, see same_model)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return result


def ci(rate: dict, label: str = "compliance") -> str:
    lo, hi = rate["ci95"][label]
    return f"{rate[label]:.2f} [{lo:.2f}, {hi:.2f}]"


def merge_best(name: str, results: dict, out_dir: Path) -> None:
    """Each model's best-attacker result into docs/research/runs/NAME.json (`models.<model>.best_attacker`)."""
    changed = False
    for model, m in results["models"].items():
        path = out_dir / f"{model}_best.json"
        if path.exists():
            m["best_attacker"] = json.loads(path.read_text())
            changed = True
    if changed:
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2))


def table(name: str, results: dict, out_dir: Path) -> str:
    steps = None
    lines = []
    has_best = any((out_dir / f"{model}_best.json").exists() for model in results["models"])
    for model, m in results["models"].items():
        d_path, f_path = out_dir / f"{model}_direction.json", out_dir / f"{model}_finetune.json"
        d = json.loads(d_path.read_text()) if d_path.exists() else None
        f = json.loads(f_path.read_text()) if f_path.exists() else None
        cells = [model, ci(m["rates"]["ORI"]), ci(m["rates"]["FULL"])]
        if d:
            cos = d["direction"].get("cosine_to_original")
            cells += [ci(d["rates"]["ABLATED"]), f"{d['direction']['layer']}",
                      f"{cos['cosine']:.3f}" if cos else "(itself)"]
        else:
            cells += ["not run"] * 3
        b_path = out_dir / f"{model}_best.json"
        if b_path.exists():
            b = json.loads(b_path.read_text())
            cells.insert(3, f"{b['asr']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]")
        elif has_best:
            cells.insert(3, "not run")
        if f:
            steps = steps or [row["steps"] for row in f["curve"]]
            cells += [f"{row['asr']:.2f} [{row['ci95'][0]:.2f}, {row['ci95'][1]:.2f}]" for row in f["curve"]]
        lines.append(cells)
    width = max(len(cells) for cells in lines)
    lines = ["| " + " | ".join(cells + ["not run"] * (width - len(cells))) + " |" for cells in lines]
    head = ["model", "ORI", "pruning FULL(SN-)"] + (["pruning, best attacker"] if has_best else [])
    head += ["direction ablated", "direction layer", "cosine to original's"]
    head += [f"finetune k={k}" for k in steps or []]
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *lines])


def plot(name: str, results: dict, out_dir: Path) -> Path | None:
    """ASR per model (x) and family (bars) with 95% intervals."""
    from safeneuron_plugins.evaluate.plots import finish_rate_figure, pyplot, rate_bars

    def rate(r: dict) -> tuple[float, list[float]]:
        return r["compliance"], r["ci95"]["compliance"]

    per_model = {}  # model -> {family: (rate, interval)}
    for model, m in results["models"].items():
        entries = {"ORI": rate(m["rates"]["ORI"]), "pruning": rate(m["rates"]["FULL"])}
        d_path, f_path = out_dir / f"{model}_direction.json", out_dir / f"{model}_finetune.json"
        b_path = out_dir / f"{model}_best.json"
        if b_path.exists():
            b = json.loads(b_path.read_text())
            entries["pruning, best attacker"] = (b["asr"], b["ci95"])
        if d_path.exists():
            entries["direction"] = rate(json.loads(d_path.read_text())["rates"]["ABLATED"])
        if f_path.exists():
            last = json.loads(f_path.read_text())["curve"][-1]
            entries[f"finetune k={last['steps']}"] = (last["asr"], last["ci95"])
        per_model[model] = entries
    if not per_model:
        return None
    models = list(per_model)
    order = ["ORI", "pruning", "pruning, best attacker", "direction"]  # then the fine-tuning column
    families = sorted(dict.fromkeys(f for entries in per_model.values() for f in entries),
                      key=lambda f: order.index(f) if f in order else len(order))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.6 + 1.8 * len(models), 3.8))
    rate_bars(ax, models, {f: [per_model[m].get(f) for m in models] for f in families})
    title = f"{name}: three attack families, n={results['n_prompts']['harmful']} held-out harmful prompts"
    return finish_rate_figure(fig, ax, title,
                              RESULTS / f"{name}_families.png",
                              legend={"fontsize": 7, "ncol": len(families), "loc": "upper center",
                                      "bbox_to_anchor": (0.5, -0.1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="a results file docs/research/runs/NAME.json from bench/reproduce.py")
    parser.add_argument("--models", help="comma list of models to attack (default: all in the results file)")
    parser.add_argument("--families", default="direction,finetune")
    parser.add_argument("--finetune-steps", default="5,10,20",
                        help="k of the steps-to-break curve (k=0 is the direction run's ORI: same prompts, same replies)")
    parser.add_argument("--grid", choices=["small", "full"], default="small",
                        help="the best attacker's grid (family `best`): small (3 settings) or full (the CLI's, 11)")
    parser.add_argument("--table", action="store_true", help="print the table of what has run and exit")
    args = parser.parse_args()
    results = json.loads((RESULTS / f"{args.name}.json").read_text())
    cfg = results["meta"]["config"]
    out_dir = RESULTS / f"{args.name}_families"
    if not args.table:
        wanted = args.models.split(",") if args.models else list(results["models"])
        dirs = model_dirs(args.name, results, wanted)
        pairs = finetune_pairs(ROOT / "runs" / "families" / "finetune_pairs.jsonl")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for model in wanted:
            for family in args.families.split(","):
                out = out_dir / f"{model}_{family}.json"
                if out.exists():
                    continue
                t0 = time.perf_counter()
                if family == "best":
                    print(f"[families] {model} best attacker ({args.grid} grid)", flush=True)
                    run_best(*dirs[model], out, cfg, args.grid)
                    command = f"bench/families.py --name {args.name} --families best --grid {args.grid}"
                else:
                    cmd = attack_command(family, dirs[model][0], out, cfg, args, dirs["original"][0], pairs)
                    print(f"[families] {model} {family}: {' '.join(cmd[1:])}", flush=True)
                    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
                    command = " ".join(cmd[1:])
                data = json.loads(out.read_text())
                data["bench"] = {"seconds": round(time.perf_counter() - t0, 1), "command": command}
                out.write_text(json.dumps(data, indent=1))
        merge_best(args.name, results, out_dir)
    text = table(args.name, results, out_dir)
    print(text)
    (RESULTS / f"{args.name}_families.md").write_text(text + "\n")
    path = plot(args.name, results, out_dir)
    if path:
        print(f"plot: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
