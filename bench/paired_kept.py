"""Paired ORI comparisons and mask overlaps of a 0.5B model trained in a later run against the models of the
first runs, from what the repository keeps: their per-prompt ORI replies (docs/results/qwen05_families/
*_direction.generations.jsonl, the same 128 held-out prompts and judge) and their masks (docs/results/qwen05/masks).
Used for ``safeneuron_rounds8`` (docs/results/qwen.md), whose earlier twins are no longer on disk:

    .venv/bin/python bench/paired_kept.py --run qwen05_more --model safeneuron_rounds8
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.evaluate.report import paired_comparisons

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
EARLIER = ("original", "dpo", "safeneuron_rounds", "safeneuron_adversarial", "safeneuron_stochastic")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cells(path: Path) -> set[tuple[int, int]]:
    return {(layer, i) for layer, idx in NeuronMask.load(path).neurons.items() for i in idx}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="its results directory under docs/results (generations.jsonl, masks/)")
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    run = RESULTS / args.run
    models = {name: {"generations": _jsonl(RESULTS / "qwen05_families" / f"{name}_direction.generations.jsonl")}
              for name in EARLIER}
    models[args.model] = {"generations": [g for g in _jsonl(run / "generations.jsonl") if g.get("model") == args.model]}
    for r in paired_comparisons(models, ("ORI",)):
        if r["a"] == args.model and r["b"] != args.model:
            print(f"{r['a']} vs {r['b']}, ORI: {r['a_asr']:.2f} vs {r['b_asr']:.2f}, {r['diff']:+.2f} "
                  f"[{r['ci95'][0]:+.2f}, {r['ci95'][1]:+.2f}], McNemar p {r['p_value']:.3g}, n {r['n']}")
    first = RESULTS / "qwen05" / "masks"
    attacker = _cells(run / "masks" / f"attacker_{args.model}.safetensors")
    frozen = _cells(run / "masks" / f"frozen_{args.model}.safetensors")
    print(f"{args.model}: attacker's neurons {len(attacker)}, frozen {len(frozen)}; of the attacker's: in T0 "
          f"{len(attacker & _cells(first / 't0.safetensors'))}, in its own frozen set {len(attacker & frozen)}, "
          f"in plain DPO's attacker set {len(attacker & _cells(first / 'attacker_dpo.safetensors'))}, in "
          f"safeneuron_rounds' {len(attacker & _cells(first / 'attacker_safeneuron_rounds.safetensors'))}")


if __name__ == "__main__":
    main()
