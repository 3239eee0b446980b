"""Evaluate a model (paper, Sec. 4): generate replies, judge them, attack by pruning, measure capability,
describe masks, report.

- ``generation``: batched greedy generation, the package's one generation routine;
- ``judges/``: refusal / compliance / evasive verdicts (patterns, relevance, classifier) and their accuracy;
- ``attack``: the neuron pruning attack (ORI, ES, SAS, FULL; sweeps, random controls, best attacker);
- ``capability``: over-refusal, perplexity, KL to a reference model;
- ``significance``: Wilson intervals and paired tests;
- ``analysis``: a mask's layer table and plots, depth profile, cross-category overlap;
- ``report``: evaluating models side by side and writing the comparison report;
- ``plots``: matplotlib set-up shared by the figures.
"""
