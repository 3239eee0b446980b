"""Paired ORI comparisons and mask overlaps of a 0.5B model trained in a later run against the models of the
first runs, from what the repository keeps: their per-prompt ORI replies (docs/research/runs/qwen05_families/
*_direction.generations.jsonl, the same 128 held-out prompts and judge) and their masks (docs/research/runs/qwen05/masks).
Used for ``safeneuron_rounds8`` (docs/research/freezing.md), whose earlier twins are no longer on disk, and for a model
trained again under a first run's name (``safeneuron_adversarial``), compared with that first model as
``NAME (first run)``:

    .venv/bin/python bench/paired_kept.py --run qwen05_more --model safeneuron_rounds8
    .venv/bin/python bench/paired_kept.py --run qwen05_more --model safeneuron_adversarial
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.evaluate.report import paired_comparisons

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "research" / "runs"
EARLIER = ("original", "dpo", "safeneuron_rounds", "safeneuron_adversarial", "safeneuron_stochastic")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cells(path: Path) -> set[tuple[int, int]]:
    return NeuronMask.load(path).cells()


def compare(run: Path, model: str, results: Path = RESULTS) -> list[str]:
    """The lines main prints: paired ORI of ``model`` (kept in ``run``) against each earlier model, then the overlaps
    of its attacker's neurons with T0, its own frozen set and the first run's attacker sets."""
    first_run = lambda name: f"{name} (first run)" if name == model else name  # noqa: E731
    models = {first_run(name): {"generations": _jsonl(results / "qwen05_families" / f"{name}_direction.generations.jsonl")}
              for name in EARLIER}
    models[model] = {"generations": [g for g in _jsonl(run / "generations.jsonl") if g.get("model") == model]}
    lines = [f"{r['a']} vs {r['b']}, ORI: {r['a_asr']:.2f} vs {r['b_asr']:.2f}, {r['diff']:+.2f} "
             f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}], McNemar p {r['p_value']:.3g}, n {r['n']}"
             for r in paired_comparisons(models, ("ORI",)) if r["a"] == model and r["b"] != model]
    first = results / "qwen05" / "masks"
    attacker = _cells(run / "masks" / f"attacker_{model}.safetensors")
    frozen = _cells(run / "masks" / f"frozen_{model}.safetensors")
    overlaps = [f"in T0 {len(attacker & _cells(first / 't0.safetensors'))}",
                f"in its own frozen set {len(attacker & frozen)}"]
    for name in ("dpo", "safeneuron_rounds") + ((model,) if model in EARLIER else ()):
        overlaps.append(f"in {first_run(name)}'s attacker set "
                        f"{len(attacker & _cells(first / f'attacker_{name}.safetensors'))}")
    lines.append(f"{model}: attacker's neurons {len(attacker)}, frozen {len(frozen)}; of the attacker's: "
                 + ", ".join(overlaps))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="its results directory under docs/research/runs (generations.jsonl, masks/)")
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    print("\n".join(compare(RESULTS / args.run, args.model)))


if __name__ == "__main__":
    main()
