"""Checking one ``safeneuron_*`` option's value against its field (type, choices, range) and guessing the
option a mistyped key meant; :class:`~safeneuron_plugins.options.SafeNeuronOptions` uses both, so every
adapter's bad value or unknown key gets the same error."""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Literal, get_args, get_origin

from .errors import OptionsError

PREFIX = "safeneuron_"



def suggest_key(key: str, known: list[str]) -> str | None:
    """The option a mistyped key most likely meant: one that ends with the key's words (a dropped
    leading word, `safeneuron_ratio` -> `safeneuron_neuron_ratio`), else the closest spelling."""
    stem = key[len(PREFIX):] if key.startswith(PREFIX) else key
    ending = [k for k in known if stem and k[len(PREFIX):].endswith("_" + stem)]
    guess = difflib.get_close_matches(key, ending or known, n=1, cutoff=0.0 if ending else 0.6)
    return guess[0] if guess else None



def check_value(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    name = f.name
    meta = f.metadata
    allowed = get_args(hint) if get_origin(hint) is not Literal else (hint,)
    optional = type(None) in allowed
    if value is None:
        if optional:
            return None
        raise OptionsError(f"`{name}` must not be empty (default: {f.default!r}).")
    base = next((a for a in allowed if a is not type(None)), hint)
    if get_origin(base) is Literal:
        choices = get_args(base)
        if value not in choices:
            raise OptionsError(
                f"`{name}` is {value!r}; choose one of {', '.join(map(repr, choices))}.")
        return value
    if base is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise OptionsError(f"`{name}` must be true or false, got {value!r}.")
        return value
    if base in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise OptionsError(f"`{name}` must be a number, got {value!r}.")
        try:
            number = base(value) if base is float else int(str(value))
        except ValueError:
            raise OptionsError(f"`{name}` must be {'an integer' if base is int else 'a number'}, "
                               f"got {value!r}.") from None
        if not math.isfinite(number):  # NaN passes every comparison below; inf is no setting either
            raise OptionsError(f"`{name}` is {value!r}: it must be a finite number. {meta['help']}")
        low, high = meta.get("low"), meta.get("high")
        too_low = low is not None and (number <= low if meta.get("low_open") else number < low)
        too_high = high is not None and number > high
        if too_low or too_high:
            left = "(" if meta.get("low_open") else "["
            rng = f"{left}{low}, {high if high is not None else 'inf'}]"
            raise OptionsError(f"`{name}` is {value!r}, outside its range {rng}. {meta['help']}")
        return number
    if base is str:
        if not isinstance(value, str):
            raise OptionsError(f"`{name}` must be a string, got {value!r}.")
        return value
    return value
