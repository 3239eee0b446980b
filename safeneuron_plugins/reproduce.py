"""Deprecated path: moved to the package safeneuron_plugins.experiment (config, train, run); this module
goes in the next release."""

from ._moved import reexport

reexport(globals(), "safeneuron_plugins.experiment", "safeneuron_plugins.experiment.config",
         "safeneuron_plugins.experiment.train", "safeneuron_plugins.experiment.run")
