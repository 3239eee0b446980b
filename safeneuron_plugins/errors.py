"""Errors raised by safeneuron-plugins. Every message names the option at fault and the fix."""

from __future__ import annotations


class SafeNeuronError(Exception):
    """Base class of every error this package raises on purpose."""


class OptionsError(SafeNeuronError, ValueError):
    """A `safeneuron_*` option is unknown or has a bad value."""


class PromptSourceError(SafeNeuronError, ValueError):
    """A harmful/harmless prompt source cannot be read or is empty."""


class UnsupportedArchitectureError(SafeNeuronError, ValueError):
    """The model's MLP neurons cannot be located automatically."""


class MaskMismatchError(SafeNeuronError, ValueError):
    """A mask file does not fit the model it is applied to."""


class MaskFormatError(SafeNeuronError, ValueError):
    """A mask file is missing, unreadable or of an unknown format version."""


class UnsupportedSetupError(SafeNeuronError, RuntimeError):
    """A training set-up under which freezing cannot be exact (refused instead of silently not freezing)."""


class OutputWriteError(SafeNeuronError, OSError):
    """A result file could not be written (disk full, no permission); the file that was there is unchanged."""
