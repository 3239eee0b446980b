"""Old module paths of the flat layout (before the identify / freeze / evaluate wings).

Each old path still imports for one release, giving the same objects as the new one, with a
DeprecationWarning that names the new path; the old paths go in the next release.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any


def _warn(what: str, new: str) -> None:
    # stacklevel 4: _warn, its caller here, the shim, then the code that imported the old path
    warnings.warn(f"{what} moved to {new}; the old path goes in the next release.", DeprecationWarning, stacklevel=4)


def reexport(namespace: dict[str, Any], *new: str) -> None:
    """Fill a shim module's namespace with every name of the modules ``new`` (first one wins), and warn."""
    for name in new:
        module = importlib.import_module(name)
        for key, value in vars(module).items():
            if not (key.startswith("__") and key.endswith("__")):
                namespace.setdefault(key, value)
    _warn(namespace["__name__"], " and ".join(new))


def moved_name(old_module: str, name: str, *new: str) -> Any:
    """For a module's ``__getattr__``: ``name`` of ``old_module`` now lives in one of the modules ``new``."""
    if name.startswith("__"):
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
    for module_name in new:
        module = importlib.import_module(module_name)
        if hasattr(module, name):
            _warn(f"{old_module}.{name}", f"{module_name}.{name}")
            return getattr(module, name)
    raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
