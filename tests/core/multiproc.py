"""Run a worker script under a 2-process launcher (torchrun or accelerate) from the test environment."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def launch_two(launcher: str, worker: str, *args, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """``launcher`` is "torchrun" or "accelerate"; skips when it is not installed; asserts a clean exit."""
    exe = shutil.which(launcher, path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip(f"{launcher} CLI not installed")
    head = ([exe, "--nproc_per_node", "2"] if launcher == "torchrun" else
            [exe, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
             "--dynamo_backend", "no"])
    proc = subprocess.run(head + [str(HERE / worker)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **env))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc
