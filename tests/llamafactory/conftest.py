"""Fixtures of the LLaMA-Factory adapter tests (defined in lfhelpers.py, shared with the test modules)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from lfhelpers import dataset_dir, make_config, tiny_model_dir  # noqa: E402,F401
