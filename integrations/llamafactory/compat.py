"""Let LLaMA-Factory import where no working torchaudio exists (CPU environments).

``llamafactory.data.mm_plugin`` imports torchaudio unconditionally, although only audio inputs of
multimodal models use it. Every torchaudio wheel pins one exact torch build, and there is none for
every torch (e.g. CPU torch 2.13), so our environment does without it. When, and only when, the real
torchaudio cannot be imported, :func:`ensure_torchaudio_importable` hands ``mm_plugin`` a minimal
stand-in module while that one module is imported, then takes it out of ``sys.modules`` again, so
that every other library (transformers' ``is_torchaudio_available()``) still sees no torchaudio.
Any use of the stand-in (loading or resampling audio) raises an ImportError that says what
happened. Nothing is written to disk and a working torchaudio is always preferred.
"""

from __future__ import annotations

import importlib.machinery
import importlib.metadata
import logging
import sys
import types

logger = logging.getLogger(__name__)

STANDIN_ATTR = "__safeneuron_standin__"

TESTED_VERSION = "0.9.5"
"""The LLaMA-Factory release whose private web-UI methods and launcher this adapter follows."""

_MESSAGE = (
    "torchaudio is not installed (or cannot load its compiled libraries) in this environment, so "
    "audio inputs are unavailable. safeneuron-llamafactory registered a stand-in module only so "
    "that LLaMA-Factory's unconditional `import torchaudio` succeeds; install a torchaudio build "
    "matching your torch ({torch}) to train on audio data."
)


def _unavailable(*_args, **_kwargs):
    import torch

    raise ImportError(_MESSAGE.format(torch=torch.__version__))


class _StandIn(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable


def ensure_torchaudio_importable() -> bool:
    """Import ``llamafactory.data.mm_plugin``, with the stand-in if needed; True if it was needed."""
    plugin = sys.modules.get("llamafactory.data.mm_plugin")
    if plugin is not None:
        return bool(getattr(getattr(plugin, "torchaudio", None), STANDIN_ATTR, False))
    try:
        import torchaudio  # noqa: F401
        return False
    except Exception:  # absent, or its compiled extension does not match this torch
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
    root = _StandIn("torchaudio", "Stand-in registered by safeneuron-llamafactory: " + _MESSAGE)
    functional = _StandIn("torchaudio.functional")
    for module in (root, functional):
        setattr(module, STANDIN_ATTR, True)
        # A spec, so importlib.util.find_spec works; no loader, no origin: nothing on disk.
        module.__spec__ = importlib.machinery.ModuleSpec(module.__name__, None)
    root.functional = functional
    sys.modules["torchaudio"] = root
    sys.modules["torchaudio.functional"] = functional
    try:
        import llamafactory.data.mm_plugin  # noqa: F401  (binds the stand-in as its `torchaudio`)
    finally:
        del sys.modules["torchaudio"], sys.modules["torchaudio.functional"]
        # transformers caches its availability probe; one taken during that import saw the stand-in.
        from transformers.utils import import_utils

        getattr(import_utils.is_torchaudio_available, "cache_clear", lambda: None)()
    return True


def version_warning(installed: str | None = None) -> str | None:
    """The warning for a LLaMA-Factory other than :data:`TESTED_VERSION` (None when it is that one)."""
    if installed is None:
        try:
            installed = importlib.metadata.version("llamafactory")
        except importlib.metadata.PackageNotFoundError:
            return None  # the import that follows reports the missing package
    if installed == TESTED_VERSION:
        return None
    return (f"LLaMA-Factory {installed} is installed; safeneuron-llamafactory is written and tested against "
            f"{TESTED_VERSION} (it overrides private web-UI methods and follows its launcher). Install "
            f"llamafactory=={TESTED_VERSION} (pip install 'safeneuron-plugins[llamafactory]') or check the "
            "stage and panel before you rely on them.")


_warned = False


def warn_if_untested_version() -> None:
    """Log :func:`version_warning` once per process."""
    global _warned
    message = version_warning()
    if message and not _warned:
        _warned = True
        logger.warning(message)
