"""Deprecated path: moved to safeneuron_plugins.evaluate.capability; this module goes in the next release."""

from ._moved import reexport

reexport(globals(), "safeneuron_plugins.evaluate.capability")
