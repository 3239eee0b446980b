"""The ``safeneuron`` argument parser (every command and its flags) and ``main``, which runs a command and
turns a user error into one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from ..errors import SafeNeuronError
from .attack import cmd_attack, cmd_identify, cmd_make_image_prompts
from .evaluate import add_lm_eval_flags, cmd_analyze, cmd_capability, cmd_compare, cmd_judge, cmd_make_pairs
from .families import ATTACK_FAMILIES, add_family_flags
from .flags import (
    _ATTACKER_FLAGS,
    _POSITIVE,
    _number,
    add_identify_flags,
    add_mask_flags,
    add_model_flags,
    cmd_options,
)
from .quickstart import cmd_quickstart


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeneuron", description="The ``safeneuron`` command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("identify", help="find the safety neurons of a model and save them as a mask")
    add_model_flags(p)
    p.add_argument("--out", required=True, help="mask file to write (.safetensors)")
    p.add_argument("--plot", default=None, help="also write a PNG of safety neurons per layer")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_identify_flags(p)
    p.set_defaults(func=cmd_identify)

    def add_eval_flags(p, harmful=True):
        p.add_argument("--judge", default="relevance",
                       help="relevance (default: refusal patterns + a check that the reply addresses the request), "
                            "patterns (refusal patterns alone) or classifier:PATH_OR_ID (a Llama-Guard-style model)")
        p.add_argument("--max-new-tokens", type=_POSITIVE, default=64, help="greedy generation length")
        p.add_argument("--gen-batch-size", type=_POSITIVE, default=16, help="prompts per generation batch")
        p.add_argument("--limit", type=_POSITIVE, default=None, help="use at most N (>= 1) prompts of each set")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("attack", help="neuron pruning attack: ASR under ORI, ES, SAS, FULL and the layer sweep")
    add_model_flags(p)
    p.add_argument("--mask", default=None, help="prune this mask instead of identifying on the model")
    p.add_argument("--harmful", dest="eval_harmful", default="builtin",
                   help="harmful prompts to attack with (a SRC as in identify; default: builtin)")
    p.add_argument("--out", required=True, help="results JSON (generations go beside it)")
    p.add_argument("--image-prompts", default=None, metavar="FILE",
                   help="vision-language models: also attack through images with this prompt file (rows with a "
                        "text turn, an `image` path and optionally the `request` the image shows, e.g. from "
                        "`safeneuron make-image-prompts`), under the same mask and conditions; the JSON and the table "
                        "give text-only (--harmful) and image ASR side by side")
    p.add_argument("--family", choices=ATTACK_FAMILIES, default="pruning",
                   help="pruning (default): prune the safety neurons; direction: ablate the refusal direction from the "
                        "residual stream (Arditi et al. 2024); finetune: LoRA fine-tuning on harmful pairs, ASR after "
                        "k steps. Flags of one family are an error with another.")
    p.add_argument("--sweep", default=None,
                   help="layer sweep: prune FULL(SN-) only in the first p%% of layers, for each p of this comma "
                        "list (integers 1..100), or `none` to skip it (default: 25,50,75,100)")
    p.add_argument("--control", default=None, metavar="random[:SEEDS]",
                   help="also prune, per seed, as many random neurons in each layer as FULL(SN-) prunes there: "
                        "`random` (seeds 0,1,2), `random:N` (seeds 0..N-1) or `random:S1,S2,...`")
    p.add_argument("--attacker", choices=["default", "best"], default="default",
                   help="`best` also re-identifies on the model with every setting of a grid (signal gate/up/"
                        "product x pooling max/mean x top 1/2/5%% of neurons) and reports the highest ASR and its "
                        "setting; `default`: only the identification options given")
    add_mask_flags(p)
    add_family_flags(p)
    add_eval_flags(p)
    add_identify_flags(p, _ATTACKER_FLAGS)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("judge", help="judge replies: adds `refused` (and label/detail) to each row")
    p.add_argument("--input", required=True, help="JSONL rows with prompt and response")
    p.add_argument("--output", required=True, help="JSONL with the same rows, in order, plus verdicts")
    p.add_argument("--judge", default="relevance", help="relevance (default), patterns or classifier:PATH_OR_ID")
    p.set_defaults(func=cmd_judge)

    p = sub.add_parser("make-pairs", help="build a safety DPO preference set from the model's own outputs")
    add_model_flags(p)
    p.add_argument("--out", required=True, help="JSONL of prompt/chosen/rejected rows")
    p.add_argument("--format", choices=["conversational", "standard"], default="conversational",
                   help="trl's conversational (message lists) or standard (plain strings) format")
    p.add_argument("--include-evasive", action="store_true", help="also use evasive replies as rejected")
    p.add_argument("--prune-mask", default=None, metavar="MASK",
                   help="generate the replies to harmful prompts with this mask's neurons pruned (the model's "
                        "safety neurons), for a model that refuses too many harmful prompts to give safety pairs")
    p.add_argument("--harmless-rejected", choices=["refusal", "other_answer"], default="refusal",
                   help="what a harmless prompt's pair rejects: a refusal template (against over-refusal), or the "
                        "model's own answer to another harmless prompt (a worse answer that is no refusal, as in "
                        "human helpfulness data; rejecting refusals can teach a model to stop refusing at all)")
    add_mask_flags(p)
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--harmful", default="builtin", help="harmful prompts (a SRC)")
    p.add_argument("--harmless", default="builtin", help="harmless prompts (a SRC)")
    add_eval_flags(p)
    p.set_defaults(func=cmd_make_pairs)

    p = sub.add_parser("analyze", help="layer profile heatmap of masks; cross-category overlap of a model")
    p.add_argument("masks", nargs="*", help="mask files to compare over normalised depth")
    p.add_argument("--model", default=None, help="identify per harm category on this model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    p.add_argument("--device-map", default=None)
    p.add_argument("--min-per-category", type=_number(int, 2), default=8)
    p.add_argument("--out-dir", default="runs/analysis")
    p.add_argument("--quiet", action="store_true")
    add_identify_flags(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("compare", help="one report putting models side by side (ASR, capability, neurons)")
    p.add_argument("models", nargs="+", help="models; the first is the reference for KL")
    p.add_argument("--harmful", dest="eval_harmful", default="builtin", help="harmful prompts to attack with")
    p.add_argument("--harmless", dest="eval_harmless", default="builtin", help="harmless prompts (over-refusal, KL)")
    p.add_argument("--reference-answers", default=None, help="JSONL with prompt/answer (default: built-in)")
    p.add_argument("--out-dir", default="runs/compare")
    p.add_argument("--format", choices=["md", "html"], default="md")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default=None)
    add_eval_flags(p)
    p.add_argument("--families", default="pruning", metavar="LIST",
                   help="attack families to run on every model, comma-separated: pruning (always; the main table), "
                        "direction (refusal-direction ablation, cosine to the first model's direction), finetune "
                        "(LoRA steps-to-break curve; needs --finetune-data). Default: pruning")
    add_family_flags(p, compare=True)
    add_lm_eval_flags(p)
    p.add_argument("--lm-eval-limit", type=_POSITIVE, default=None, metavar="N",
                   help="with --lm-eval: at most N documents per task")
    p.add_argument("--lm-eval-pruned", action="store_true",
                   help="with --lm-eval: also score each model with its FULL(SN-) safety neurons pruned (as many "
                        "lm_eval runs again)")
    add_identify_flags(p, _ATTACKER_FLAGS)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("capability", help="capability through lm-evaluation-harness, optionally with a mask pruned")
    add_model_flags(p)
    add_lm_eval_flags(p, required=True)
    p.add_argument("--mask", default=None, help="prune this mask's neurons while lm_eval runs (capability under the "
                                                "pruning attack); the weights are left as they were")
    p.add_argument("--mlp-modules", default=None, help="where the MLP neurons are, for --mask on an architecture "
                                                       "not recognised (as in identify)")
    add_mask_flags(p)
    p.add_argument("--limit", type=_POSITIVE, default=None, metavar="N", help="at most N documents per task")
    p.add_argument("--num-fewshot", type=_number(int, 0), default=None,
                   help="few-shot examples per prompt (default: each task's own setting, else 0)")
    p.add_argument("--batch-size", type=_POSITIVE, default=8, help="lm_eval's batch size (default: 8)")
    p.add_argument("--chat-template", action="store_true",
                   help="format prompts with the model's chat template (lm_eval's --apply_chat_template)")
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars, lm_eval logs errors only")
    p.set_defaults(func=cmd_capability)

    p = sub.add_parser("quickstart", help="the main job: SafeNeuron DPO vs plain DPO under the pruning attack")
    add_model_flags(p, default="default")
    p.add_argument("--output-dir", default="runs/quickstart", help="where the report, models and mask go")
    p.add_argument("--variants", default="dpo,safeneuron",
                   help="comma-separated: dpo, safeneuron, safeneuron_prune, safeneuron_down, safeneuron_ratio, "
                        "safeneuron_iter")
    p.add_argument("--train-harmful", default="builtin:harmful", help="prompts for the preference pairs")
    p.add_argument("--train-harmless", default="builtin:harmless")
    p.add_argument("--eval-harmful", default="builtin:harmful", help="held out from training when it is the "
                                                                      "same source")
    p.add_argument("--eval-harmless", default="builtin:harmless")
    p.add_argument("--n-train", type=_POSITIVE, default=40, help="training prompts of each kind")
    p.add_argument("--n-eval", type=_POSITIVE, default=24, help="held-out evaluation prompts of each kind")
    p.add_argument("--epochs", type=_number(float, 0, open_low=True), default=1.0)
    p.add_argument("--max-steps", type=_number(int, -1), default=-1, help="-1: as many as --epochs give")
    p.add_argument("--learning-rate", type=_number(float, 0, open_low=True), default=5e-5)
    p.add_argument("--sft-weight", type=_number(float, 0), default=1.0,
                   help="weight of an SFT loss on the chosen replies added to DPO (0: plain DPO loss)")
    p.add_argument("--max-new-tokens", type=_POSITIVE, default=32)
    p.add_argument("--sweep", action="store_true", help="also run the 25/50/75/100%% layer sweep")
    p.add_argument("--control", default="random:1", metavar="random[:SEEDS]|none",
                   help="also prune as many random neurons in each layer as FULL(SN-) prunes, per seed, as in "
                        "`safeneuron attack --control` (default: random:1, one seed)")
    p.add_argument("--judge", default="relevance", help="relevance (default), patterns or classifier:PATH_OR_ID")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_identify_flags(p, {"safeneuron_harmful": "--identify-harmful", "safeneuron_harmless": "--identify-harmless"})
    p.set_defaults(func=cmd_quickstart)

    from ..image_prompts import FONT_SIZE, SIZE, TEXT_TURN

    p = sub.add_parser("make-image-prompts", help="render instructions as typographic images (FigStep-style) and "
                                                  "write image prompt files for a vision-language model")
    p.add_argument("--out-dir", required=True, help="writes harmful.jsonl, harmless.jsonl and images/ here")
    p.add_argument("--harmful", default="builtin:harmful", help="harmful instructions to render (a SRC, or none)")
    p.add_argument("--harmless", default="builtin:harmless",
                   help="matched harmless instructions (a SRC, or none); cut to as many as the harmful ones")
    p.add_argument("--text-turn", default=TEXT_TURN, help=f"the text turn of every prompt (default: {TEXT_TURN!r})")
    p.add_argument("--limit", type=_POSITIVE, default=None, help="at most N (>= 1) prompts of each set")
    p.add_argument("--size", type=_number(int, 64), default=SIZE, help="image side in pixels")
    p.add_argument("--font-size", type=_number(int, 12), default=FONT_SIZE,
                   help="starting font size (shrunk until the instruction fits)")
    p.set_defaults(func=cmd_make_image_prompts)

    p = sub.add_parser("options", help="list every safeneuron_* option")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (docs/OPTIONS.md)")
    p.set_defaults(func=cmd_options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("safeneuron").setLevel(logging.INFO)
    try:
        return args.func(args)
    except SafeNeuronError as exc:  # every user error: one line, exit 2; -v adds the traceback
        if args.verbose:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
