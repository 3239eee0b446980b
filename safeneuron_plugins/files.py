"""Every file the package writes goes through :func:`write_file`: results, replies, verdicts, pairs, prompt
files, reports, plots, masks and refusal directions.

- The data go to a temporary file beside the target, are flushed and fsync'ed, and the temporary file is
  renamed over the target: a reader, a crash or a full disk never sees or leaves half a file.
- A target that exists must be a file of the same :class:`FileKind` (a results file over a results file, a
  mask over a mask): a model's ``config.json`` / ``model.safetensors`` / ``tokenizer.json``, a mask where a
  results file is asked for, or an unrelated JSON is refused, never replaced. An empty file holds nothing
  and may be replaced.
- A target that is one of the command's inputs (``judge --input F --output F``) is refused.
- A failed write (disk full, no permission) is one :class:`~safeneuron_plugins.errors.OutputWriteError`
  naming the option and the file; the file that was there is left as it was.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import OptionsError, OutputWriteError, PromptSourceError


@dataclass(frozen=True)
class FileKind:
    """A kind of file the package writes: ``name`` for messages ("a SafeNeuron mask"), an ``example`` file
    name, and ``recognise(path)``: whether an existing file is one of this kind (so a write may replace it)."""

    name: str
    example: str
    recognise: Callable[[Path], bool]
    hint: str = ""


_PEEK = 1 << 20  # JSON lines files: the rows of their first MiB tell the kind


def _json_object(keys: tuple[str, ...], any_of: bool = False) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        if path.stat().st_size > 256 << 20:
            return False
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except (ValueError, OSError):
            return False
        if not isinstance(data, dict):
            return False
        return any(k in data for k in keys) if any_of else all(k in data for k in keys)
    return recognise


def _json_lines(keys: tuple[str, ...]) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                head = f.read(_PEEK + 1)
            lines = head.split(b"\n")
            if len(head) > _PEEK:
                lines = lines[:-1]  # a row cut by the peek
            rows = [json.loads(line) for line in lines if line.strip()]
        except (ValueError, OSError):
            return False
        return bool(rows) and all(isinstance(r, dict) and all(k in r for k in keys) for r in rows)
    return recognise


def _text_with(marker: str) -> Callable[[Path], bool]:
    def recognise(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return marker.encode() in f.read(_PEEK)
        except OSError:
            return False
    return recognise


_IMAGE_MAGIC = {".png": (b"\x89PNG\r\n\x1a\n",), ".pdf": (b"%PDF",), ".jpg": (b"\xff\xd8\xff",),
                ".jpeg": (b"\xff\xd8\xff",)}


def _image(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    suffix = path.suffix.lower()
    if suffix == ".svg":
        return b"<svg" in head
    return any(head.startswith(m) for m in _IMAGE_MAGIC.get(suffix, ()))


def has_metadata_key(path: str | os.PathLike, key: str) -> bool:
    """Whether ``path`` is a safetensors file whose metadata has ``key``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return key in (f.metadata() or {})
    except Exception:
        return False


def _safetensors_with(key: str) -> Callable[[Path], bool]:
    return lambda path: has_metadata_key(path, key)


# --- the kinds of file the package writes -------------------------------------------------------------
MASK = FileKind("a SafeNeuron mask", "mask.safetensors", _safetensors_with("safeneuron"),
                " (is it a model's weights?)")
DIRECTION = FileKind("a refusal-direction file", "direction.safetensors", _safetensors_with("safeneuron_direction"))
RESULTS = FileKind("an attack results file (JSON with `asr` and `rates`)", "results.json",
                   _json_object(("asr", "rates")))
CAPABILITY = FileKind("a capability results file (JSON with `lm_eval_version`)", "capability.json",
                      _json_object(("lm_eval_version",)))
ANALYSIS = FileKind("an analysis file (JSON with `masks` or `overlap`)", "analysis.json",
                    _json_object(("masks", "overlap"), any_of=True))
REPORT_RESULTS = FileKind("a report's results file (JSON with `models`)", "results.json", _json_object(("models",)))
COUNTS = FileKind("a pair counts file (JSON with `harmful_pairs`)", "pairs_counts.json",
                  _json_object(("harmful_pairs",)))
GENERATIONS = FileKind("a replies file (JSON lines with `prompt` and `response`)", "generations.jsonl",
                       _json_lines(("prompt", "response")))
VERDICTS = FileKind("a verdicts file (JSON lines with `prompt`, `response`, `refused` and `judge`)",
                    "verdicts.jsonl", _json_lines(("prompt", "response", "refused", "judge")))
PAIRS = FileKind("a preference pairs file (JSON lines with `prompt`, `chosen` and `rejected`)", "pairs.jsonl",
                 _json_lines(("prompt", "chosen", "rejected")))
PROMPTS = FileKind("a prompt file (JSON lines with `prompt`)", "prompts.jsonl", _json_lines(("prompt",)))
REPORT = FileKind("a SafeNeuron report", "report.md", _text_with("ASR = share of harmful prompts"))
IMAGE = FileKind("an image of the same format", "plot.png", _image)
EXPERIMENT = FileKind("an experiment's settings file (JSON with `model` and `learning_rate`)", "experiment.json",
                      _json_object(("model", "learning_rate")))
TRAINING = FileKind("a training record (JSON with `train_seconds` and `steps`)", "training.json",
                    _json_object(("train_seconds", "steps")))
CHUNKS = FileKind("a record of training chunks (JSON with `chunks`)", "chunks.json", _json_object(("chunks",)))
MANIFEST = FileKind("a trained model's manifest (JSON with `variant` and `weights_sha256`)", "manifest.json",
                    _json_object(("variant", "weights_sha256")))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_destination(path: str | os.PathLike, flag: str, kind: FileKind, *, error: type[Exception] = OptionsError,
                      inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """``path`` as a Path when a file of ``kind`` may be written there: not a directory, not one of the
    ``inputs`` (pairs of the input's flag and path), and not an existing file that is not of ``kind`` (never
    overwrite anything else); else ``error`` naming ``flag``. Creates nothing."""
    path = Path(path)
    if not str(path).strip():
        raise error(f"{flag} is empty; give a file path such as {kind.example!r}.")
    if path.is_dir():
        raise error(f"{flag} {str(path)!r} is a directory; give a file path such as {str(path / kind.example)!r}.")
    for input_flag, source in inputs:
        if source is not None and _same_file(path, Path(source)):
            raise error(f"{flag} {str(path)!r} is the file {input_flag} reads; refusing to write over an input. "
                        "Give another path.")
    if path.exists() and path.stat().st_size > 0 and not kind.recognise(path):
        raise error(f"{flag} {str(path)!r} exists and is not {kind.name}; refusing to overwrite it{kind.hint}. "
                    "Give another path, or remove the file first.")
    return path


def write_file(path: str | os.PathLike, data: bytes | str, flag: str, kind: FileKind, *,
               error: type[Exception] = OptionsError,
               inputs: Iterable[tuple[str, str | os.PathLike | None]] = ()) -> Path:
    """Write ``data`` (str: UTF-8) to ``path`` as a file of ``kind``: checked by :func:`check_destination`,
    then written atomically (creating missing folders). A failed write raises
    :class:`~safeneuron_plugins.errors.OutputWriteError` naming ``flag``; the old file stays as it was."""
    path = check_destination(path, flag, kind, error=error, inputs=inputs)
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise OutputWriteError(f"{flag} {str(path)!r} could not be written ({reason}); nothing was written, and "
                               f"{'the file there is unchanged' if path.exists() else 'no file was left there'}. "
                               "Free some space or fix the permissions, and run again.") from exc
    return path


_LINE_END = re.compile(r"\r\n|\r|\n")  # the only line ends: U+2028, U+0085, form feed are text


def text_lines(text: str) -> list[str]:
    """``text`` split on real line ends only (LF, CRLF, CR); unlike ``str.splitlines``, U+2028, U+2029, U+0085,
    form feed and vertical tab stay inside a line, as they are inside a prompt."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def read_json_objects(path: str | os.PathLike, what: str, expected: str = "") -> list[tuple[int, dict]]:
    """The objects of a JSON-lines file with their line numbers, blank lines skipped. Every error names ``what``
    (the option or role, and the file), the line, and what each line must be (``expected``)."""
    source = Path(path)
    if not source.is_file():
        raise PromptSourceError(f"{what}: no such file." if not source.exists() else f"{what} is not a file.")
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptSourceError(f"{what} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
    except OSError as exc:
        raise PromptSourceError(f"{what} cannot be read ({exc.strerror}).") from None
    rows = []
    for n, line in enumerate(text_lines(text), 1):  # real line ends only: a U+2028 in a reply is part of it
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptSourceError(f"{what} line {n} is not JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise PromptSourceError(f"{what} line {n} is a JSON {type(row).__name__}; each line must be an object"
                                    + (f" {expected}." if expected else "."))
        rows.append((n, row))
    return rows


def json_lines(rows: Iterable[dict]) -> str:
    """``rows`` as JSON lines (one object per line, each ending in a line feed)."""
    return "".join(json.dumps(r) + "\n" for r in rows)


def figure_bytes(fig, path: str | os.PathLike, dpi: int = 120) -> bytes:
    """A matplotlib figure rendered in the format ``path``'s suffix names (png, pdf, svg, jpg)."""
    suffix = Path(path).suffix.lower().lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format="jpeg" if suffix == "jpg" else suffix, dpi=dpi)
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary names of writes to ``path`` whose process is gone (killed in the instant
    between naming its complete file and renaming it over ``path``: no rename can close that window)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 2:].split(".")[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:  # the writer is dead: its file is garbage
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, another user's
            pass


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a part.

    The data goes into a file that has no name until it is complete (Linux O_TMPFILE), is linked under a
    temporary name and renamed over ``path`` at once (elsewhere: a named temporary file, removed on any
    error). A process killed (SIGKILL) in the instant between those two calls leaves that hidden temporary
    name behind; the next write to ``path`` removes it."""
    _remove_stale_temporaries(path)
    mode = 0o666 & ~_umask()
    fd = None
    if hasattr(os, "O_TMPFILE"):
        try:
            fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, mode)
        except OSError:  # the file system has no unnamed temporary files
            fd = None
    if fd is not None:
        tmp = _temporary_name(path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
                try:  # linkat(AT_SYMLINK_FOLLOW) of the unnamed file: it gets a name only now, and
                    # loses it again at once (the rename), before anything else runs
                    os.link(str(f.fileno()), tmp, src_dir_fd=proc, follow_symlinks=True)
                    os.replace(tmp, path)
                finally:
                    os.close(proc)
                    if os.path.lexists(tmp):
                        os.unlink(tmp)
            return
        except FileNotFoundError:  # no /proc: fall through to a named temporary file
            pass
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
