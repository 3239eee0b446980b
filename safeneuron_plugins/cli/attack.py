"""`safeneuron identify`, `safeneuron attack` (the pruning family) and `safeneuron make-image-prompts`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import OptionsError, PromptSourceError
from ..files import GENERATIONS, RESULTS
from ..mask import NeuronMask
from ..options import SafeNeuronOptions
from .common import (
    _image_processor,
    _judge,
    _load,
    _texts,
    attack_inputs,
    check_identification,
    check_mask_on_model,
    check_model_args,
    check_output,
    check_outputs_in,
    check_plot,
    input_files,
    write_results,
)
from .families import _attack_family, check_family_flags
from .flags import allow_other_weights, options_from_args, parse_control, parse_sweep


def cmd_identify(args) -> int:
    from ..evaluate.analysis import layer_table, plot_layers
    from ..files import MASK
    from ..identification import identify

    opts = options_from_args(args)
    check_output(args.out, "--out", kind=MASK)
    if Path(args.out).suffix.lower() != ".safetensors":
        raise OptionsError(f"--out {args.out!r}: a mask is a safetensors file; give a name ending in .safetensors, "
                           f"e.g. {str(Path(args.out).with_suffix('.safetensors'))!r}.")
    check_plot(args.plot)
    check_model_args(args)
    images = check_identification(opts)
    model, tokenizer = _load(args)
    processor = _image_processor(args, model, images)
    start = time.perf_counter()
    mask = identify(model, tokenizer, options=opts, progress=not args.quiet, processor=processor)
    mask.metadata["model"] = args.model
    path = mask.save(args.out, flag="--out")
    print(layer_table(mask))
    print(f"wrote {path} in {time.perf_counter() - start:.1f}s")
    if args.plot:
        print(f"plot: {plot_layers(mask, args.plot, title=f'{args.model}: {mask.num_neurons} safety neurons', flag='--plot')}")
    return 0


def _overlap_warning(options: SafeNeuronOptions, harmful: list[str]) -> int:
    """How many evaluation prompts the attacker also identifies on; warns when any (not held out)."""
    from ..identification.prompts import load_prompts

    ident = {p.text for p in load_prompts(options.safeneuron_harmful, kind="harmful",
                                          max_prompts=options.safeneuron_max_prompts, option="--identify-harmful")}
    shared = sum(t in ident for t in harmful)
    if shared:
        print(f"warning: {shared} of the {len(harmful)} evaluation prompts (--harmful) are also identification "
              "prompts (--identify-harmful), so the attack is not measured on held-out prompts; give one of the two "
              "another source.", file=sys.stderr)
    return shared


def cmd_attack(args) -> int:
    """Identify (as an attacker would) or load a mask, prune, generate, judge."""
    from ..evaluate.attack import BEST_ATTACKER_GRID, run_attack
    from ..evaluate.tables import pruning_table
    from ..evaluate.vision import format_side_by_side, side_by_side
    from ..identification import identify

    check_family_flags(args)
    if args.family != "pruning":
        return _attack_family(args)
    sweep = parse_sweep(args.sweep if args.sweep is not None else "25,50,75,100")
    control_seeds = parse_control(args.control)
    options = options_from_args(args)
    inputs = attack_inputs(args)
    out = check_output(args.out, "--out", kind=RESULTS, inputs=inputs)
    gen_path = check_output(out.with_name(out.stem + ".generations.jsonl"), "--out (its generations file)",
                            kind=GENERATIONS, inputs=inputs)
    check_model_args(args)
    allow = allow_other_weights(args)
    given_mask = NeuronMask.load(args.mask) if args.mask else None
    images = {}
    if given_mask is None or args.attacker == "best" or options.safeneuron_mlp_modules:
        images = check_identification(options, "--identify-harmful", "--identify-harmless")
    harmful = _texts(args.eval_harmful, "harmful", args.limit, "--harmful")
    image_prompts = _image_prompts(args.image_prompts, args.limit)
    judge = _judge(args)
    model, tokenizer = _load(args)
    processor = _image_processor(args, model, {**images, "--image-prompts": len(image_prompts or [])})
    if given_mask is not None:
        mask = given_mask
        check_mask_on_model(mask, model, options.safeneuron_mlp_modules, allow)
    else:
            mask = identify(model, tokenizer, options=options, progress=not args.quiet, processor=processor)
    overlap = None if args.mask and args.attacker == "default" else _overlap_warning(options, harmful)
    common = dict(judge=judge, max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                  system_prompt=args.safeneuron_system_prompt, sweep=sweep, control_seeds=control_seeds,
                  identify_options=options, progress=not args.quiet)
    results = run_attack(model, tokenizer, harmful, mask, processor=processor,
                         best_attacker_grid=BEST_ATTACKER_GRID if args.attacker == "best" else None, **common)
    if image_prompts:
        through_images = run_attack(model, tokenizer, [p.text for p in image_prompts], mask, processor=processor,
                                    images=[p.image for p in image_prompts],
                                    requests=[p.judged for p in image_prompts], **common)
        side_by_side(results, through_images, args.image_prompts)
    results["model"] = args.model
    results["safety_neurons"] = mask.num_neurons
    results["attacker"] = args.attacker
    if overlap is not None:
        results["identification_overlap"] = overlap  # evaluation prompts the attacker also identified on
    write_results(results, out, gen_path, inputs)
    print(pruning_table(results))
    if image_prompts:
        print(format_side_by_side(results))
    print(f"wrote {out} and {gen_path}")
    return 0


def _image_prompts(source: str | None, limit: int | None):
    """--image-prompts: a prompt file whose rows carry images (read before any model is loaded)."""
    from ..identification.prompts import load_prompts

    if source is None:
        return None
    prompts = load_prompts(source, kind="harmful", max_prompts=limit, option="--image-prompts", min_prompts=1)
    if not any(p.image is not None for p in prompts):
        raise PromptSourceError(f"--image-prompts {source!r}: no row has an `image` column; give a file written by "
                                "`safeneuron make-image-prompts` (or rows with prompt + image path), or pass text-only "
                                "prompts with --harmful.")
    return prompts


def cmd_make_image_prompts(args) -> int:
    from ..files import PROMPTS
    from ..identification.prompts import load_prompts
    from ..image_prompts import write_image_prompts

    out_dir = check_output(args.out_dir, "--out-dir", directory=True)
    sets = {kind: load_prompts(src, kind=kind, max_prompts=args.limit, option=f"--{kind}", min_prompts=1)
            for kind, src in (("harmful", args.harmful), ("harmless", args.harmless)) if src != "none"}
    check_outputs_in(out_dir, "--out-dir", {f"{kind}.jsonl": PROMPTS for kind in sets},
                     input_files(("--harmful", args.harmful), ("--harmless", args.harmless)))
    if not sets:
        raise OptionsError("--harmful none and --harmless none leave nothing to render; give at least one source.")
    if len(sets) == 2 and not args.limit:  # matched: as many harmless as harmful prompts
        n = min(len(v) for v in sets.values())
        sets = {k: v[:n] for k, v in sets.items()}
    for kind, prompts in sets.items():
        path = write_image_prompts(prompts, out_dir, kind, text_turn=args.text_turn, size=args.size,
                                   font_size=args.font_size)
        print(f"wrote {path} ({len(prompts)} prompts, images in {out_dir / 'images'})")
    return 0

