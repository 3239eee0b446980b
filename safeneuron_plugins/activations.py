"""Deprecated path: moved to safeneuron_plugins.identify.activations and safeneuron_plugins.identify.batching;
this module goes in the next release."""

from ._moved import reexport

reexport(globals(), "safeneuron_plugins.identify.activations", "safeneuron_plugins.identify.batching")
