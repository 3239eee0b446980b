"""The refusal-direction and harmful fine-tuning families of `safeneuron attack` and `compare --families`:
their flags, checks and runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import OptionsError, PromptSourceError
from ..mask import NeuronMask
from ..options import SafeNeuronOptions, option_fields
from .common import (
    _judge,
    _load,
    _texts,
    attack_inputs,
    check_mask_on_model,
    check_model_args,
    check_output,
    read_replies,
    write_results,
)
from .flags import _ATTACKER_FLAGS, _POSITIVE, _flag, _number, allow_other_weights, options_from_args, parse_int_list, parse_steps

ATTACK_FAMILIES = ("pruning", "direction", "finetune")


#: dest -> (flag, family) of the flags that belong to one family only
_FAMILY_FLAGS = {
    "mask": ("--mask", "pruning"), "sweep": ("--sweep", "pruning"), "control": ("--control", "pruning"),
    "image_prompts": ("--image-prompts", "pruning"),
    "direction": ("--direction", "direction"), "save_direction": ("--save-direction", "direction"),
    "original": ("--original", "direction"), "direction_layers": ("--direction-layers", "direction"),
    "direction_positions": ("--direction-positions", "direction"), "validation": ("--validation", "direction"),
    "validation_tokens": ("--validation-tokens", "direction"), "finetune_data": ("--finetune-data", "finetune"),
    "finetune_steps": ("--finetune-steps", "finetune"), "finetune_lr": ("--finetune-lr", "finetune"),
    "finetune_batch_size": ("--finetune-batch-size", "finetune"), "finetune_lora_r": ("--finetune-lora-r", "finetune"),
    "finetune_seed": ("--finetune-seed", "finetune"), "respect_mask": ("--respect-mask", "finetune"),
}


#: identification options the other families use (the rest configure the neuron scorer)
_FAMILY_OPTIONS = {
    "direction": {"safeneuron_harmful", "safeneuron_harmless", "safeneuron_max_prompts", "safeneuron_system_prompt",
                  "safeneuron_batch_size", "safeneuron_max_length", "safeneuron_mlp_modules"},
    "finetune": {"safeneuron_system_prompt", "safeneuron_max_length", "safeneuron_mlp_modules"},
}


DIRECTION_VALIDATION = 16


DIRECTION_VALIDATION_TOKENS = 16


#: family flags that only `attack` has (compare selects a direction per model, the first model is the original)
_ATTACK_ONLY_FLAGS = ("direction", "save_direction", "original", "respect_mask")


def add_family_flags(parser: argparse.ArgumentParser, *, compare: bool = False) -> None:
    """The direction and finetune families' flags: all of them for `attack --family`, the knobs without the
    file and mask flags (:data:`_ATTACK_ONLY_FLAGS`) for `compare --families`."""
    which = "--families ...,{}" if compare else "--family {}"
    g = parser.add_argument_group(f"{which.format('direction')} (refusal-direction ablation)")
    if not compare:
        g.add_argument("--direction", default=None, metavar="FILE",
                       help="ablate this saved direction (from --save-direction) instead of selecting one on the model")
        g.add_argument("--save-direction", default=None, metavar="FILE",
                       help="write the direction ablated (safetensors, with its layer and position) to FILE")
        g.add_argument("--original", default=None, metavar="MODEL_OR_FILE",
                       help="the original model, or its saved direction file: report the cosine between its refusal "
                            "direction and this model's at the same layer and position")
    g.add_argument("--direction-layers", default=None, metavar="LIST",
                   help="candidate decoder layers (comma list of indices, or `all`; default: 4 layers at 25/40/55/70%% "
                        "of the depth)")
    g.add_argument("--direction-positions", default=None, metavar="LIST",
                   help="candidate post-instruction positions, as negative offsets from the end of the templated "
                        "prompt, written with `=`: --direction-positions=-1,-2 (or `all`; default: -1)")
    g.add_argument("--validation", type=_POSITIVE, default=None,
                   help=f"harmful prompts (from --identify-harmful, never evaluation prompts) held out from the means "
                        f"to choose the candidate whose ablation refuses least (default: {DIRECTION_VALIDATION})")
    g.add_argument("--validation-tokens", type=_POSITIVE, default=None,
                   help=f"reply length while choosing the candidate (default: {DIRECTION_VALIDATION_TOKENS})")
    g = parser.add_argument_group(f"{which.format('finetune')} (LoRA fine-tuning on harmful pairs)")
    g.add_argument("--finetune-data", default=None, metavar="JSONL",
                   help="harmful training pairs: JSONL rows with `prompt` and `response` (required)")
    g.add_argument("--finetune-steps", default=None, metavar="LIST",
                   help="evaluate after each of these numbers of optimizer steps (distinct whole numbers >= 0; "
                        "default: 0,5,10,20; 0 is the untouched model)")
    g.add_argument("--finetune-lr", type=_number(float, 0, open_low=True), default=None,
                   help="AdamW learning rate of the LoRA adapter (default: 2e-4)")
    g.add_argument("--finetune-batch-size", type=_POSITIVE, default=None, help="pairs per step (default: 4)")
    g.add_argument("--finetune-lora-r", type=_POSITIVE, default=None, help="LoRA rank, alpha = 2r (default: 8)")
    g.add_argument("--finetune-seed", type=_number(int, 0), default=None, help="adapter init and data order (default: 0)")
    if not compare:
        g.add_argument("--respect-mask", action="store_true", default=None,
                       help="keep the adapter at zero on --mask's neurons (default: the attacker ignores any mask)")


def check_family_flags(args) -> None:
    """Flags of another family, and identification options the family does not use, are errors."""
    for dest, (flag, family) in _FAMILY_FLAGS.items():
        if getattr(args, dest, None) is not None and family != args.family:
            if dest == "mask" and args.family == "finetune":
                if not args.respect_mask:
                    raise OptionsError("--mask with --family finetune: the fine-tuning attacker ignores masks by "
                                       "default; add --respect-mask to keep the mask's neurons frozen during the "
                                       "attack, or drop --mask.")
                continue
            raise OptionsError(f"{flag} belongs to --family {family}, not --family {args.family}; drop it or use "
                               f"--family {family}.")
    if args.family != "pruning" and args.attacker != "default":
        raise OptionsError(f"--attacker {args.attacker} belongs to --family pruning, not --family {args.family}.")
    if args.family == "finetune" and args.respect_mask and args.mask is None:
        raise OptionsError("--respect-mask needs --mask FILE: the neurons to keep frozen during the attack.")
    if args.family in _FAMILY_OPTIONS:
        renamed = {**{f.name: _flag(f.name) for f in option_fields()}, **_ATTACKER_FLAGS}
        for f in option_fields():
            if f.metadata["identify"] and getattr(args, f.name, None) is not None and f.name not in _FAMILY_OPTIONS[args.family]:
                raise OptionsError(f"{renamed[f.name]} configures the neuron identification of --family pruning; "
                                   f"--family {args.family} does not use it. Drop it.")
    if args.family == "direction" and args.direction is not None:
        for dest in ("direction_layers", "direction_positions", "validation", "validation_tokens"):
            if getattr(args, dest) is not None:
                raise OptionsError(f"{_FAMILY_FLAGS[dest][0]} chooses the direction on the model; --direction FILE "
                                   "brings one. Give one of the two.")


def _direction_prompts(options: SafeNeuronOptions, harmful: list[str], n_val: int):
    """The direction's harmful (means), validation and harmless prompts; evaluation prompts are left out."""
    import random

    from ..identification.prompts import load_prompts

    evaluation = set(harmful)
    pool = [p.text for p in load_prompts(options.safeneuron_harmful, kind="harmful",
                                         max_prompts=options.safeneuron_max_prompts, option="--identify-harmful",
                                         min_prompts=1) if p.text not in evaluation]
    harmless = _texts(options.safeneuron_harmless, "harmless", options.safeneuron_max_prompts, "--identify-harmless")
    if len(pool) < n_val + 1:
        raise PromptSourceError(f"--identify-harmful gives {len(pool)} prompt(s) that are not evaluation prompts "
                                f"(--harmful); --validation {n_val} of them choose the direction and at least 1 more "
                                "must remain for the means. Give another source, or a smaller --validation.")
    random.Random(0).shuffle(pool)  # sources are often ordered by category
    return pool[n_val:], pool[:n_val], harmless


def _attack_family(args) -> int:
    """``attack --family direction|finetune``: check every input, load the model, attack, write the results."""
    from ..files import GENERATIONS, RESULTS

    options = options_from_args(args)
    allow = allow_other_weights(args)
    inputs = attack_inputs(args)
    out = check_output(args.out, "--out", kind=RESULTS, inputs=inputs)
    gen_path = check_output(out.with_name(out.stem + ".generations.jsonl"), "--out (its generations file)",
                            kind=GENERATIONS, inputs=inputs)
    check_model_args(args)
    if options.safeneuron_mlp_modules:
        from ..architectures import parse_mlp_modules

        parse_mlp_modules(options.safeneuron_mlp_modules)
    harmful = _texts(args.eval_harmful, "harmful", args.limit, "--harmful")
    progress = not args.quiet
    common = dict(max_new_tokens=args.max_new_tokens, system_prompt=options.safeneuron_system_prompt,
                  max_length=options.safeneuron_max_length, mlp_modules=options.safeneuron_mlp_modules,
                  progress=progress)
    if args.family == "direction":
        from ..evaluate import attack_direction as ad
        from ..evaluate import direction_file
        from ..evaluate.residual import residual_modules
        from ..evaluate.tables import direction_table
        from ..models import check_model_spec

        if args.save_direction:
            from ..files import DIRECTION

            check_output(args.save_direction, "--save-direction", kind=DIRECTION, inputs=inputs)
        layers = parse_int_list(args.direction_layers, "--direction-layers") if args.direction_layers else None
        all_layers = args.direction_layers is not None and layers is None
        positions = (parse_int_list(args.direction_positions, "--direction-positions", negative=True)
                     if args.direction_positions else [-1])
        given = direction_file.RefusalDirection.load(args.direction, "--direction") if args.direction else None
        original = None
        if args.original is not None:
            if direction_file.is_direction_file(args.original):
                original = direction_file.RefusalDirection.load(args.original, "--original")
            elif Path(args.original).suffix == ".safetensors":
                raise OptionsError(f"--original {args.original!r} is not a refusal-direction file (write one with "
                                   "--save-direction) nor a model directory.")
            else:
                check_model_spec(args.original)
        n_val = args.validation or DIRECTION_VALIDATION
        sets = ((None, None, None) if given is not None and args.original is None
                else _direction_prompts(options, harmful, n_val if given is None else 0))
        judge = _judge(args)
        means_kw = dict(system_prompt=options.safeneuron_system_prompt, batch_size=options.safeneuron_batch_size,
                        max_length=options.safeneuron_max_length, mlp_modules=options.safeneuron_mlp_modules,
                        progress=progress)
        if args.original is not None and original is None:  # the original's means, then free it
            from ..models import load_model

            other, other_tok = load_model(args.original, dtype=args.dtype, device=args.device,
                                          device_map=args.device_map)
            original = ad.direction_means(other, other_tok, sets[0], sets[2], **means_kw)
            del other, other_tok
        model, tokenizer = _load(args)
        embedding, blocks = residual_modules(model, options.safeneuron_mlp_modules)
        width, num_layers = embedding.weight.shape[-1], len(blocks)
        post = ad.post_instruction_tokens(tokenizer, options.safeneuron_system_prompt)
        layers, positions = ad.resolve_candidates(model, tokenizer, "all" if all_layers else layers,
                                                  "all" if positions is None else positions,
                                                  system_prompt=options.safeneuron_system_prompt,
                                                  mlp_modules=options.safeneuron_mlp_modules)
        for flag, d in (("--direction", given), ("--original", original)):
            if isinstance(d, direction_file.RefusalDirection):
                if d.vector.numel() != width or d.layer >= num_layers or d.position < -post:
                    raise OptionsError(f"{flag}: the direction (hidden size {d.vector.numel()}, layer {d.layer}, "
                                       f"position {d.position}) does not fit this model (hidden size {width}, "
                                       f"{num_layers} layers, {post} post-instruction tokens).")
        results = ad.run_direction_attack(model, tokenizer, harmful, direction_harmful=sets[0], validation=sets[1],
                                          direction_harmless=sets[2], direction=given, original=original,
                                          judge=judge, layers=layers, positions=positions,
                                          validation_tokens=args.validation_tokens or DIRECTION_VALIDATION_TOKENS,
                                          batch_size=args.gen_batch_size, **common)
        direction = results.pop("_direction")
        if given is not None:
            results["direction"]["file"] = args.direction
        if args.original is not None:
            results["direction"]["cosine_to_original"]["original"] = args.original
        if args.save_direction:
            direction.metadata["model"] = args.model
            results["direction"]["saved_to"] = str(direction.save(args.save_direction))
        table = direction_table(results)
    else:
        from ..evaluate.attack_finetune import run_finetune_attack
        from ..evaluate.tables import finetune_table

        steps = parse_steps(args.finetune_steps)
        if args.finetune_data is None:
            raise OptionsError("--family finetune needs --finetune-data JSONL: the attacker's harmful training pairs, "
                               "one JSON object with `prompt` and `response` per line.")
        pairs = read_replies(args.finetune_data, "--finetune-data")
        mask = NeuronMask.load(args.mask) if args.mask else None
        judge = _judge(args)
        model, tokenizer = _load(args)
        if mask is not None:
            check_mask_on_model(mask, model, options.safeneuron_mlp_modules, allow)
        results = run_finetune_attack(model, tokenizer, harmful, pairs, steps=steps, judge=judge,
                                      learning_rate=args.finetune_lr or 2e-4, batch_size=args.finetune_batch_size or 4,
                                      lora_r=args.finetune_lora_r or 8, respect_mask=mask,
                                      seed=args.finetune_seed or 0, gen_batch_size=args.gen_batch_size, **common)
        results["finetune"]["data"] = args.finetune_data
        table = finetune_table(results)
    results["model"] = args.model
    write_results(results, out, gen_path, inputs)
    print(table)
    print(f"wrote {out} and {gen_path}")
    return 0


def _family_settings(args, opts: SafeNeuronOptions, harmful: list[str]):
    """compare --families and the families' flags, checked (and their prompts and pairs read) before any
    model is loaded."""
    from ..evaluate.families import FAMILIES, FamilySettings

    names = [n.strip() for n in args.families.split(",")]
    fix = "e.g. --families pruning,direction,finetune"
    if any(n not in FAMILIES for n in names) or len(set(names)) != len(names):
        raise OptionsError(f"--families {args.families!r}: give distinct names of {', '.join(FAMILIES)}, {fix}.")
    if "pruning" not in names:
        raise OptionsError(f"--families {args.families!r}: compare always runs the pruning attack (its main table); "
                           f"add pruning, {fix}.")
    for dest, (flag, family) in _FAMILY_FLAGS.items():
        if dest not in _ATTACK_ONLY_FLAGS and family != "pruning" and getattr(args, dest, None) is not None \
                and family not in names:
            raise OptionsError(f"{flag} belongs to the {family} family; add it to --families "
                               f"(--families {','.join(names + [family])}) or drop {flag}.")
    settings = FamilySettings(families=tuple(FAMILIES[i] for i in sorted(FAMILIES.index(n) for n in names)))
    if "direction" in names:
        if args.direction_layers is not None:
            settings.layers = parse_int_list(args.direction_layers, "--direction-layers") or "all"
        if args.direction_positions is not None:
            settings.positions = parse_int_list(args.direction_positions, "--direction-positions", negative=True) or "all"
        settings.validation_tokens = args.validation_tokens or DIRECTION_VALIDATION_TOKENS
        settings.direction_harmful, settings.validation, settings.direction_harmless = _direction_prompts(
            opts, harmful, args.validation or DIRECTION_VALIDATION)
    if "finetune" in names:
        settings.steps = parse_steps(args.finetune_steps)
        if args.finetune_data is None:
            raise OptionsError("--families ...,finetune needs --finetune-data JSONL: the attacker's harmful training "
                               "pairs, one JSON object with `prompt` and `response` per line.")
        settings.pairs = read_replies(args.finetune_data, "--finetune-data")
        settings.learning_rate = args.finetune_lr or settings.learning_rate
        settings.batch_size = args.finetune_batch_size or settings.batch_size
        settings.lora_r = args.finetune_lora_r or settings.lora_r
        settings.seed = args.finetune_seed or settings.seed
    return settings

