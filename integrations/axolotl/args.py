"""Axolotl's pydantic args for SafeNeuron, generated from the core's one options schema.

Every ``safeneuron_*`` field of :class:`~safeneuron_plugins.options.SafeNeuronOptions` becomes a
field here with the same name, type, default and documentation. Axolotl merges this model into
its config schema (``get_input_args``), so its config validation also runs the core's checks, and
rejects unknown ``safeneuron_*`` keys, which Axolotl would otherwise drop silently.
"""

from __future__ import annotations

from typing import Any, get_type_hints

from pydantic import BaseModel, Field, create_model, model_validator

from safeneuron_plugins.options import SafeNeuronOptions, option_fields, split_options


class _SafeNeuronValidation(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def check_safeneuron_options(cls, data: Any) -> Any:
        """Validate every ``safeneuron_*`` key with the core (typos, types, ranges, choices)."""
        if not isinstance(data, dict):
            return data
        ours, _ = split_options(data)
        options = SafeNeuronOptions.from_dict(ours, source="the Axolotl config")
        return {**data, **{k: getattr(options, k) for k in ours}}


_HINTS = get_type_hints(SafeNeuronOptions)
_FIELDS = {
    f.name: (_HINTS[f.name], Field(default=f.default, description=f.metadata["help"]))
    for f in option_fields()
}

SafeNeuronArgs = create_model(
    "SafeNeuronArgs",
    __base__=_SafeNeuronValidation,
    __module__=__name__,
    __doc__="Input args of the SafeNeuron Axolotl plugin (one field per `safeneuron_*` option).",
    **_FIELDS,
)

__all__ = ["SafeNeuronArgs"]
