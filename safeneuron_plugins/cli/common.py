"""Checks, model loading and readers that several `safeneuron` commands share."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from ..errors import OptionsError, PromptSourceError, SafeNeuronError
from ..options import SafeNeuronOptions


def _load(args):
    from ..models import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)


def check_output(path: str | os.PathLike | None, flag: str, *, directory: bool = False, kind=None,
                 inputs: Iterable[tuple[str, str | None]] = ()) -> Path | None:
    """Raise :class:`OptionsError` naming ``flag`` unless ``path`` can be written (creating missing parent
    directories); creates nothing. ``directory``: ``path`` is a directory to write into. ``kind`` (a
    :class:`~safeneuron_plugins.files.FileKind`): an existing file there must be of that kind, and ``path``
    none of ``inputs`` (see :func:`~safeneuron_plugins.files.check_destination`)."""
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
    if kind is not None:
        from ..files import check_destination

        check_destination(path, flag, kind, inputs=inputs)
    return path


def check_outputs_in(directory: Path, flag: str, names: dict[str, object], inputs=()) -> None:
    """The files a command writes under ``directory`` (``names``: file name -> FileKind), checked before any
    work: each may replace only a file of its own kind, and no input."""
    from ..files import check_destination

    for name, kind in names.items():
        check_destination(directory / name, f"{flag} (its {name})", kind, inputs=inputs)


def input_files(*given: tuple[str, str | None]) -> list[tuple[str, str]]:
    """(flag, file) of the inputs a command reads, from (flag, value) pairs: a prompt source ``FILE:field``
    names FILE; `builtin`, hub ids and values that are no file are left out."""
    found = []
    for flag, value in given:
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if not path.is_file() and ":" in value:
            path = Path(value.rpartition(":")[0])
        if path.is_file():
            found.append((flag, str(path)))
    return found


def check_plot(path: str | None, flag: str = "--plot") -> None:
    from ..files import IMAGE

    if path is None:
        return
    check_output(path, flag)
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise OptionsError(f"{flag} {path!r}: give a .png, .pdf, .svg or .jpg file name.")
    check_output(path, flag, kind=IMAGE)


def check_model_args(args) -> None:
    """--dtype, --device and an evidently mistyped local MODEL path."""
    from ..models import check_model_spec, parse_dtype

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
    from ..architectures import parse_mlp_modules
    from ..identification.prompts import load_prompts

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
    from ..identification.images import check_image_prompts
    from ..models import load_processor

    if not any(images.values()):
        return None
    for flag, n in images.items():
        check_image_prompts(model, None, flag, n, need_processor=False)
    return load_processor(args.model, model)


def _texts(source: str, kind: str, limit: int | None, option: str) -> list[str]:
    from ..identification.prompts import load_prompts

    prompts = load_prompts(source, kind=kind, max_prompts=limit, option=option, min_prompts=1)
    if any(p.image is not None for p in prompts):
        raise PromptSourceError(f"{option} {source!r}: its rows carry images, and {option} takes text-only prompts; "
                                "give the image prompts with --image-prompts FILE (attack: text and image ASR side by "
                                f"side), and text-only prompts with {option}.")
    return [p.text for p in prompts]


def _judge(args):
    """The --judge, loaded before any other work; a bad name or an unloadable classifier is a clear error."""
    from ..evaluate.judges import load_judge

    try:
        return load_judge(args.judge)
    except SafeNeuronError:
        raise
    except (ValueError, OSError, ImportError) as exc:
        raise OptionsError(f"--judge {args.judge!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                           ) from exc


def check_mask_on_model(mask, model, mlp_modules: str | None, allow: bool, flag: str = "--mask") -> None:
    """Refuse ``mask`` (a NeuronMask, of ``flag``) when it was not made for ``model``; one made on other
    weights of it only with ``allow``, and then with a warning on stderr."""
    from ..architectures import find_mlp_layers
    from ..fingerprint import fingerprint

    fp = fingerprint(model, find_mlp_layers(model, mlp_modules))
    for warning in mask.check_compatible(fp, what=flag, allow_other_weights=allow):
        print(f"warning: {warning}", file=sys.stderr)


def read_replies(path: str, flag: str = "--input") -> list[dict]:
    """JSONL rows, each an object with string ``prompt`` and ``response``; errors name the line."""
    from ..files import read_json_objects

    rows = []
    for n, row in read_json_objects(path, f"{flag} {path!r}", "with `prompt` and `response` fields"):
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


def attack_inputs(args) -> list[tuple[str, str]]:
    """The files `attack` reads (prompt sources, masks, pairs, directions): its outputs may be none of them."""
    return input_files(*((flag, getattr(args, dest, None)) for dest, flag in (
        ("eval_harmful", "--harmful"), ("safeneuron_harmful", "--identify-harmful"),
        ("safeneuron_harmless", "--identify-harmless"), ("image_prompts", "--image-prompts"), ("mask", "--mask"),
        ("finetune_data", "--finetune-data"), ("direction", "--direction"), ("original", "--original"))))


def write_results(results: dict, out, gen_path, inputs) -> None:
    """An attack's results JSON at ``out`` and its replies beside it (``gen_path``), each written whole or not at
    all; the replies first (the costly part)."""
    from ..files import GENERATIONS, RESULTS, json_lines, write_file

    generations = results.pop("generations")
    write_file(gen_path, json_lines(generations), "--out (its generations file)", GENERATIONS, inputs=inputs)
    write_file(out, json.dumps(results, indent=2), "--out", RESULTS, inputs=inputs)
