"""Seconds per DPO step of a reproduction run's recipe, with trl's gradient checkpointing on (its default) and off.

Takes the settings and preference pairs of a run of bench/reproduce.py (``runs/reproduce/NAME``, made by its pairs
stage) and trains its ``--variant`` for ``--steps`` optimizer steps in a fresh process per configuration,
alternating on/off ``--repeats`` times. Prints the median step time over the steps after the first, each process's
peak resident memory, and the ratio off/on measured side by side. Off trains the same weights
(tests/core/test_reproduce.py), so the ratio is what a run saves.

    .venv/bin/python bench/step_time.py --run qwen05_more [--variant dpo] [--steps 3] [--repeats 1]
    .venv/bin/python bench/step_time.py --run qwen05_more --variant safeneuron_rounds --reidentify-steps 8

A run's experiment.json does not hold the re-identification intervals (each variant of a run may have its own), so the
variants that take theirs from the experiment (``safeneuron_rounds``, ``safeneuron_adversarial``) need them given here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(run: Path, variant: str, steps: int, checkpointing: bool, out: Path, intervals: dict[str, int]) -> None:
    from dataclasses import fields

    from safeneuron_plugins.experiment import ExperimentConfig, identification_options, train_variant

    saved = json.loads((run / "experiment.json").read_text())
    known = {f.name for f in fields(ExperimentConfig)}
    cfg = ExperimentConfig(**{k: v for k, v in saved.items() if k in known})
    cfg.max_steps, cfg.save_steps, cfg.gradient_checkpointing, cfg.progress = steps, 0, checkpointing, False
    for field, value in intervals.items():
        setattr(cfg, field, value)
    with tempfile.TemporaryDirectory(dir=run) as tmp:  # beside the run: the model's checkpoints are GBs
        # re-identification reads the run's identification prompts, as the run's own training did
        facts = train_variant(cfg, variant, run / "pairs.jsonl", run / "original_mask.safetensors", Path(tmp) / variant,
                              identify=identification_options(cfg, run))
    out.write_text(json.dumps({"median_step_seconds": facts["median_step_seconds"], "peak_rss_gb": facts["peak_rss_gb"],
                               "steps": facts["steps"]}))


def _check_variant(variant: str, intervals: dict[str, int]) -> None:
    """Fail here, before any training process starts, on a variant that cannot train with these settings."""
    from safeneuron_plugins.experiment import ExperimentConfig, variant_options

    try:
        variant_options(ExperimentConfig(**intervals), variant, Path("mask.safetensors"))
    except (KeyError, ValueError) as e:
        sys.exit(f"step_time: {e.args[0] if isinstance(e, ValueError) else f'no variant {variant}'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True,
                        help="a run of bench/reproduce.py (its pairs stage done): a name under runs/reproduce, or a path")
    parser.add_argument("--variant", default="dpo")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per process (the first is not timed)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--reidentify-steps", type=int, default=0, help="variant safeneuron_rounds: its interval")
    parser.add_argument("--adversarial-steps", type=int, default=0, help="variant safeneuron_adversarial: its interval")
    parser.add_argument("--child", nargs=2, metavar=("CHECKPOINTING", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    run = Path(args.run) if Path(args.run).is_dir() else ROOT / "runs" / "reproduce" / args.run
    intervals = {"reidentify_steps": args.reidentify_steps, "adversarial_steps": args.adversarial_steps}
    if args.child:
        child(run, args.variant, args.steps, args.child[0] == "on", Path(args.child[1]), intervals)
        return
    _check_variant(args.variant, intervals)
    if not (run / "pairs.jsonl").is_file():
        sys.exit(f"step_time: {run / 'pairs.jsonl'} is missing: run bench/reproduce.py --name {args.run} first "
                 "(its pairs stage)")
    if args.steps < 2:
        sys.exit("step_time: --steps must be at least 2 (the first step is not timed)")
    seen: dict[str, list[dict]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for mode in ("on", "off"):
                out = Path(tmp) / f"{mode}{i}.json"
                subprocess.run([sys.executable, __file__, "--run", str(run), "--variant", args.variant,
                                "--steps", str(args.steps), "--reidentify-steps", str(args.reidentify_steps),
                                "--adversarial-steps", str(args.adversarial_steps), "--child", mode, str(out)],
                               check=True)
                seen[mode].append(json.loads(out.read_text()))
                print(f"[step_time] checkpointing {mode}: {seen[mode][-1]}", flush=True)
    on = statistics.median(r["median_step_seconds"] for r in seen["on"])
    off = statistics.median(r["median_step_seconds"] for r in seen["off"])
    print(f"{args.run} {args.variant}: {on:.1f} s/step with gradient checkpointing (peak "
          f"{max(r['peak_rss_gb'] for r in seen['on'])} GB), {off:.1f} s/step without (peak "
          f"{max(r['peak_rss_gb'] for r in seen['off'])} GB): off/on = "
          # steps are timed to 0.1 s: a tiny model's on a fast CPU round to 0
          + (f"{off / on:.2f}" if on > 0 else "n/a (steps under 0.05 s; time a larger model)"))


if __name__ == "__main__":
    main()
