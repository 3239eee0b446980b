"""Adapters import as safeneuron_plugins.integrations.<framework> from an editable install and from a built wheel."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ("import safeneuron_plugins, safeneuron_plugins.integrations as i, safeneuron_plugins.integrations.hf as hf;"
         "from safeneuron_plugins.identification.prompts import load_prompts;"
         "assert len(load_prompts('builtin')) >= 128;"
         "print(safeneuron_plugins.__file__); print(i.__file__); print(hf.SafeNeuronCallback.__name__)")


def _run(env_extra, cwd):
    env = dict(os.environ, **env_extra)
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def test_editable_install_maps_integrations(tmp_path):
    proc = _run({}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    core, integ, name = proc.stdout.split()
    assert Path(core).parent == ROOT / "safeneuron_plugins"
    assert Path(integ).parent == ROOT / "integrations"
    assert name == "SafeNeuronCallback"


def test_built_wheel_ships_integrations_and_data(tmp_path):
    build = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                            str(ROOT)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    # setuptools warns when a folder with package data is not a listed package (it would stop shipping it)
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("safeneuron_plugins-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "safeneuron_plugins/integrations/hf.py" in names
    assert "safeneuron_plugins/data/harmful.jsonl" in names
    assert not any(n.startswith("integrations/") for n in names), "no stray top-level package"
    # every module of the source tree ships (pyproject lists the packages one by one)
    missing = [rel for module in sorted((ROOT / "safeneuron_plugins").rglob("*.py"))
               if (rel := module.relative_to(ROOT).as_posix()) not in names]
    assert not missing, f"not in the wheel (add the package to pyproject's [tool.setuptools] packages): {missing}"
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    proc = _run({"PYTHONPATH": str(target)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    core, integ, _ = proc.stdout.split()
    assert Path(core).is_relative_to(target) and Path(integ).is_relative_to(target)
