"""Prompt sources (built-in set, local files, Hugging Face datasets) and chat formatting.

A source is a string:
- ``builtin`` (or ``builtin:harmful`` / ``builtin:harmless``): the set shipped with the package,
  written by the project (``safeneuron_plugins/data``);
- a local ``.jsonl``, ``.json``, ``.csv`` or ``.txt`` file; ``path.jsonl:field`` picks the field
  (default: ``prompt``, then ``instruction``, ``question``, ``text``, ``goal``, ``behavior``, ``query``);
- ``hf:DATASET_ID[:split[:field]]``: a Hugging Face dataset (loaded with ``datasets``).

Files are read as written (UTF-8, an optional byte-order mark), one rule per suffix: ``.json`` a list of
prompts (strings, or objects holding the field), or an object keeping that list under ``prompts`` (else
``data``), any other JSON refused; ``.jsonl`` one JSON string or object per line, split on real line ends
only (LF, CRLF, CR: a U+2028 or U+0085 is part of a prompt); ``.csv`` a header row, then rows read by the
``csv`` module (a quoted field keeps its commas and line breaks); ``.txt`` one prompt per line (a form feed
is text), spaces around it stripped. Blank lines are skipped; a row that is neither a string nor an object,
or a field that is not a string, is refused naming its line or row (a null field is an empty prompt).

A row may carry an image for a vision-language model: an ``image`` (or ``image_path``) column next to
the prompt, a path relative to the file's folder (or a ``datasets`` Image column); see
:mod:`safeneuron_plugins.identification.images`. A ``request`` column names what the image asks for (the
typographic prompts of ``safeneuron make-image-prompts``); judges read it instead of the text turn.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import PromptSourceError
from ..files import text_lines
from .image_files import IMAGE_FIELDS, resolve_image

logger = logging.getLogger("safeneuron")
_DEFAULT_FIELDS = ("prompt", "instruction", "question", "text", "goal", "behavior", "query")
_SUFFIXES = (".jsonl", ".json", ".csv", ".txt")


@dataclass
class Prompt:
    text: str
    category: str | None = None
    image: Any = None            # a path (str) or a PIL image, for vision-language models
    request: str | None = None   # what an image prompt asks for, when the text turn does not say it

    @property
    def judged(self) -> str:
        """The text a judge compares a reply with: the request, else the prompt text."""
        return self.request or self.text


def builtin_path(name: str) -> Path:
    return Path(str(resources.files("safeneuron_plugins") / "data" / name))


def load_prompts(source: str, *, kind: str = "harmful", max_prompts: int | None = None,
                 option: str = "safeneuron_harmful", min_prompts: int = 2) -> list[Prompt]:
    """Read a prompt source; ``kind`` picks the built-in set. Errors name ``option``.

    ``max_prompts`` keeps the first N (N >= 1); fewer than ``min_prompts`` non-empty prompts (after
    that cut) is an error: identification statistics need 2 of each kind, an evaluation 1."""
    if max_prompts is not None and (isinstance(max_prompts, bool) or not isinstance(max_prompts, int)
                                    or max_prompts < 1):
        raise PromptSourceError(f"{option}: at most {max_prompts!r} prompts is no limit; give a whole number "
                                ">= 1 (or no limit).")
    if not isinstance(source, str) or not source:
        raise PromptSourceError(f"{option}={source!r}: give 'builtin', a .jsonl/.json/.csv/.txt file or "
                                "hf:DATASET_ID[:split[:field]].")
    if source in ("builtin", f"builtin:{kind}") or source.startswith("builtin:"):
        name = source.split(":", 1)[1] if ":" in source else kind
        if name not in ("harmful", "harmless"):
            raise PromptSourceError(f"{option}={source!r}: built-in sets are builtin:harmful and "
                                    "builtin:harmless.")
        prompts = _read_file(builtin_path(f"{name}.jsonl"), None, option)
    elif source.startswith("hf:"):
        prompts = _read_hf(source, option)
    else:
        path, field = _split_field(source)
        if not path.exists():
            raise PromptSourceError(
                f"{option}={source!r}: no such file {str(path)!r}. Give a .jsonl/.json/.csv/.txt "
                "file (path.jsonl:field picks the field), 'builtin', or hf:DATASET_ID[:split[:field]].")
        prompts = _read_file(path, field, option)
    prompts = [p for p in prompts if p.text.strip()]
    if not prompts:
        raise PromptSourceError(f"{option}={source!r} holds no prompts (empty file or empty field); "
                                f"give a source with at least {max(min_prompts, 1)} non-empty prompts.")
    prompts = prompts[:max_prompts] if max_prompts else prompts
    if len(prompts) < min_prompts:
        raise PromptSourceError(f"{option}={source!r} gives {len(prompts)} prompt(s); at least {min_prompts} "
                                "are needed (statistics over fewer are meaningless; use >= 64).")
    return prompts


def _split_field(source: str) -> tuple[Path, str | None]:
    path = Path(source)
    if path.exists():
        return path, None
    head, sep, field = source.rpartition(":")
    if sep and head and Path(head).suffix.lower() in _SUFFIXES:
        return Path(head), field or None
    return path, None


def _pick(row: dict, field: str | None, where: str, option: str) -> str:
    if field is not None:
        if field not in row:
            raise PromptSourceError(f"{option}: {where} has no field {field!r}; fields: {sorted(row)}. "
                                    f"Pick one with SOURCE:field.")
        return _text_of(row[field], field, where, option)
    for name in _DEFAULT_FIELDS:
        if name in row:
            return _text_of(row[name], name, where, option)
    raise PromptSourceError(f"{option}: {where} has none of the fields {list(_DEFAULT_FIELDS)}; "
                            f"fields: {sorted(row)}. Pick one with SOURCE:field (e.g. data.jsonl:text).")


def _text_of(value, field: str, where: str, option: str) -> str:
    """A prompt field's text: a string, or null (an empty prompt, skipped); anything else is an error,
    never the str() of a number or a list."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PromptSourceError(f"{option}: {where} field {field!r} is {type(value).__name__} {value!r:.60}, "
                                "not a string. Pick a text field with SOURCE:field.")
    return value


def _rows_to_prompts(rows, field: str | None, where: str, option: str, base: Path | None = None,
                     labels: list[str] | None = None) -> list[Prompt]:
    """Prompts of ``rows`` (strings, or objects with the prompt field); ``labels`` name each row in errors."""
    out = []
    for i, row in enumerate(rows):
        label = labels[i] if labels else f"row {i} of {where}"
        if isinstance(row, str):
            out.append(Prompt(row))
            continue
        if not isinstance(row, dict):
            raise PromptSourceError(f"{option}: {label} is {type(row).__name__} {row!r:.40}, expected a string or an "
                                    "object with the prompt field.")
        category = row.get("category")
        image_field = next((f for f in IMAGE_FIELDS if f in row), None)
        image = (resolve_image(row[image_field], base, label, option, image_field)
                 if image_field else None)
        request = row.get("request")
        out.append(Prompt(_pick(row, field, label, option),
                          str(category) if category is not None else None, image,
                          request if isinstance(request, str) and request.strip() else None))
    return out


#: a JSON prompt file holding one object keeps its prompts under one of these keys (the first present)
_JSON_LISTS = ("prompts", "data")


def _read_file(path: Path, field: str | None, option: str) -> list[Prompt]:
    """A prompt file, read as written (the rules are in the module docstring)."""
    suffix = path.suffix.lower()
    where = str(path)
    if suffix not in _SUFFIXES:
        raise PromptSourceError(f"{option}: {where} has suffix {suffix!r}; use .jsonl, .json, .csv or .txt.")
    try:  # bytes, decoded here: no newline translation (a CR inside a quoted CSV field stays)
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark is not part of the first field
    except UnicodeDecodeError as exc:
        raise PromptSourceError(f"{option}: {where} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except OSError as exc:
        raise PromptSourceError(f"{option}: cannot read {where}: {exc.strerror or exc}") from None
    if suffix == ".jsonl":
        numbered = [(n, line) for n, line in enumerate(text_lines(text), 1) if line.strip()]
        rows = []
        for n, line in numbered:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise PromptSourceError(f"{option}: {where} line {n} is not JSON: {exc}") from exc
        return _rows_to_prompts(rows, field, where, option, path.parent, [f"line {n} of {where}" for n, _ in numbered])
    if suffix == ".json":
        try:
            data = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as exc:
            raise PromptSourceError(f"{option}: {where} is not JSON: {exc}") from exc
        if isinstance(data, dict):
            key = next((k for k in _JSON_LISTS if k in data), None)
            if key is None:
                raise PromptSourceError(f"{option}: {where} holds one JSON object (keys: {', '.join(list(data)[:8])}) "
                                        "without a `prompts` or `data` list of prompts; one object per line is a "
                                        ".jsonl file.")
            data = data[key]
            where = f"{where} (its `{key}`)"
        if not isinstance(data, list):
            raise PromptSourceError(
                f"{option}: {where} holds a JSON {type(data).__name__} ({json.dumps(data)[:40]}), not a list of "
                "prompts. Give a list: [\"first prompt\", ...] or [{\"prompt\": ...}, ...].")
        return _rows_to_prompts(data, field, where, option, path.parent)
    if suffix == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as exc:
            raise PromptSourceError(f"{option}: {where} is not valid CSV ({exc}).") from exc
        return _rows_to_prompts(rows, field, where, option, path.parent, [f"row {i + 1} of {where}" for i in range(len(rows))])
    return [Prompt(line.strip()) for line in text_lines(text) if line.strip()]  # .txt: one prompt per line


def _read_hf(source: str, option: str) -> list[Prompt]:
    parts = source[3:].split(":")
    dataset_id = parts[0]
    split = parts[1] if len(parts) > 1 and parts[1] else "train"
    field = parts[2] if len(parts) > 2 and parts[2] else None
    try:
        import datasets
    except ImportError as exc:
        raise PromptSourceError(f"{option}={source!r} needs the `datasets` package: "
                                "pip install datasets") from exc
    try:
        data = datasets.load_dataset(dataset_id, split=split)
    except Exception as exc:  # datasets raises many types; all mean "cannot load it"
        raise PromptSourceError(
            f"{option}={source!r}: cannot load dataset {dataset_id!r} split {split!r} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Check the id "
            "and split, or that you are online / HF_DATASETS_OFFLINE is unset.") from exc
    return _rows_to_prompts(iter(data), field, f"{dataset_id}[{split}]", option)


def format_prompts(tokenizer, prompts: list[str], system_prompt: str | None = None) -> list[str]:
    """Apply the tokenizer's chat template (generation prompt added); raw text without one. A template
    that refuses a system turn gets ``system_prompt`` at the start of the user turn (see
    :func:`system_turn_refused`)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return [f"{system_prompt}\n\n{p}" if system_prompt else p for p in prompts]
    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    fold = system_turn_refused(render, system_prompt, tokenizer,
                               lambda text: [{"role": "user", "content": text}],
                               lambda text: {"role": "system", "content": text})
    out = []
    for prompt in prompts:
        if fold:
            messages = [{"role": "user", "content": f"{system_prompt}\n\n{prompt}"}]
        else:
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": prompt}]
        out.append(render(messages))
    return out


def system_turn_refused(render, system_prompt: str | None, tokenizer, user, system) -> bool:
    """Whether the chat template raises on a system turn but not without one (Gemma 1/2's templates: "System
    role not supported"); then the caller puts ``system_prompt`` at the start of the user turn, the documented
    fallback of ``safeneuron_system_prompt``, and a warning naming the option and the model says so. Any
    other template error is raised as it is. ``user(text)`` / ``system(text)`` build the turns ``render``
    takes."""
    if not system_prompt:
        return False
    try:
        render([system(system_prompt), *user("Hi")])
        return False
    except Exception as exc:
        render(user("Hi"))  # a template broken for every conversation raises its own error here
        name = getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        logger.warning(
            "The chat template of %s refuses a system turn (%s: %s), so safeneuron_system_prompt / "
            "--system-prompt is put at the start of the user turn instead (the documented fallback); unset it "
            "to format prompts without it.", name, type(exc).__name__, str(exc).splitlines()[0][:120] if str(exc) else "")
        return True


def write_prompts(path: Path, texts: list[str], flag: str = "prompt file") -> Path:
    """Write ``texts`` as a prompt file that :func:`load_prompts` reads back (JSON lines, field ``prompt``),
    through the one writer (atomic; never over a file of another kind)."""
    from ..files import PROMPTS, json_lines, write_file

    return write_file(path, json_lines({"prompt": t} for t in texts), flag, PROMPTS)


def prompts_hash(*sets: list[str]) -> str:
    digest = hashlib.sha256()
    for texts in sets:
        for t in texts:
            digest.update(t.encode("utf-8"))
            digest.update(b"\0")
        digest.update(b"\1")
    return digest.hexdigest()[:16]
