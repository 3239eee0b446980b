"""The adapter names the LLaMA-Factory version it follows, and every pin agrees with it."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from safeneuron_plugins.integrations.llamafactory.compat import TESTED_VERSION, version_warning

ROOT = Path(__file__).resolve().parents[2]


def test_pins_installed_version_and_docstring_agree():
    script = (ROOT / "scripts" / "env_llamafactory.sh").read_text()
    assert re.search(r'^LLAMAFACTORY_VERSION="([^"]+)"', script, re.M).group(1) == TESTED_VERSION
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^llamafactory = \["llamafactory==([^"]+)"\]', pyproject, re.M).group(1) == TESTED_VERSION
    assert importlib.metadata.version("llamafactory") == TESTED_VERSION
    import safeneuron_plugins.integrations.llamafactory as adapter

    assert f"LLaMA-Factory {TESTED_VERSION}" in adapter.__doc__


def test_another_version_is_warned_about_by_name():
    assert version_warning(TESTED_VERSION) is None
    message = version_warning("0.9.6")
    assert "0.9.6" in message and f"llamafactory=={TESTED_VERSION}" in message
