"""Files the package writes (masks, refusal directions): atomic writes, and destination checks that never
let a write replace a file of another kind."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path


def check_destination(path: str | os.PathLike, flag: str, *, kind: str, example: str, is_kind,
                      error: type[Exception], hint: str = "") -> Path:
    """``path`` as a Path when it can take a file of ``kind``: not a directory, and not an existing file
    that ``is_kind`` rejects (never overwrite anything else); else ``error`` naming ``flag``."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{flag} {str(path)!r} is a directory; give a file path such as {str(path / example)!r}.")
    if path.exists() and not is_kind(path):
        raise error(f"{flag} {str(path)!r} exists and is not {kind}; refusing to overwrite it{hint}. Give "
                    "another path, or remove the file first.")
    return path


def has_metadata_key(path: str | os.PathLike, key: str) -> bool:
    """Whether ``path`` is a safetensors file whose metadata has ``key``."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return key in (f.metadata() or {})
    except Exception:
        return False


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
