"""Power of the paired comparison of two models' attack success rates (exact McNemar, two-sided), by
simulation: the table of the paper15 protocol (docs/research/paper15/protocol.md).

    .venv/bin/python bench/paired_power.py [--n 200] [--ratio 0.78] [--rates 0.56,0.7,0.8,0.9] [--rhos 0,0.3,0.5,0.7]
"""

from __future__ import annotations

import argparse

from safeneuron_plugins.evaluate.significance import paired_power


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="paired prompts")
    parser.add_argument("--ratio", type=float, default=0.78, help="ASR(a) / ASR(b) to detect (the paper's 1.5B row)")
    parser.add_argument("--rates", default="0.56,0.7,0.8,0.9", help="ASR(b), the baseline's rate")
    parser.add_argument("--rhos", default="0,0.3,0.5,0.7", help="tetrachoric correlation of the pairs")
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    rhos = [float(r) for r in args.rhos.split(",")]
    print(f"power, n {args.n}, ratio {args.ratio}, alpha 0.05, {args.draws} draws")
    print("| baseline ASR | " + " | ".join(f"rho {r:g}" for r in rhos) + " |")
    print("|---|" + "---|" * len(rhos))
    for rate in (float(x) for x in args.rates.split(",")):
        cells = [f"{paired_power(rate, args.ratio, args.n, rho, draws=args.draws):.2f}" for rho in rhos]
        print(f"| {rate:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
