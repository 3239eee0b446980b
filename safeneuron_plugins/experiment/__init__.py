"""The experiment runner (not part of the library's training API): original model -> safety pairs ->
plain DPO and SafeNeuron DPO variants -> attack and capability checks -> results and report.
``safeneuron quickstart`` and ``bench/reproduce.py`` run it; it needs the ``trl`` extra.

- ``config``: :class:`ExperimentConfig`, the variants, the prompt split, resume checks;
- ``train``: one DPO run of a variant with trl;
- ``run``: :func:`run_experiment` and :func:`print_summary`.
"""

from .config import ROLES, VARIANTS, ExperimentConfig, identification_options, split_prompts, variant_options
from .run import print_summary, run_experiment
from .train import train_variant

__all__ = ["ExperimentConfig", "VARIANTS", "ROLES", "split_prompts", "variant_options", "identification_options",
           "train_variant",
           "run_experiment", "print_summary"]
