"""Deprecated path: moved to the package safeneuron_plugins.evaluate.judges (base, patterns, relevance,
classifier, accuracy); this module goes in the next release. ``python -m safeneuron_plugins.judge`` is
``python -m safeneuron_plugins.evaluate.judges``."""

from ._moved import reexport

if __name__ == "__main__":
    from .evaluate.judges.accuracy import main

    main()
else:
    reexport(globals(), "safeneuron_plugins.evaluate.judges", "safeneuron_plugins.evaluate.judges.patterns",
             "safeneuron_plugins.evaluate.judges.relevance", "safeneuron_plugins.evaluate.judges.classifier",
             "safeneuron_plugins.evaluate.judges.accuracy")
