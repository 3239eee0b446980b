"""``train``: SafeNeuron DPO through LLaMA-Factory's own ``run_exp``, in one process or under torchrun.

LLaMA-Factory's launcher re-executes its own ``launcher.py`` under torchrun for multi-device and
DeepSpeed runs, which would bypass our callback. We decide the same way it does (FORCE_TORCHRUN,
USE_MCA, more than one device) and re-execute *this* module under torchrun, so every rank strips
the ``safeneuron_*`` keys and gets the callback. Running ``python -m`` on this module is the worker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from copy import deepcopy
from typing import Any

from .args import prepare_train_args
from .compat import ensure_torchaudio_importable, warn_if_untested_version

WORKER_MODULE = "safeneuron_plugins.integrations.llamafactory.launcher"


def read_config(argv: list[str]) -> dict[str, Any] | list[str]:
    """LLaMA-Factory's own reading of ``config.yaml [key=value ...]`` (or a ``--key value`` list)."""
    from llamafactory.hparams import read_args

    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        return read_args()
    finally:
        sys.argv = saved


def run(args: dict[str, Any] | list[str], *, warn: bool = True) -> None:
    """One process: strip our keys, build the callback, call LLaMA-Factory's ``run_exp``."""
    rest, options = prepare_train_args(args, warn=warn)
    callbacks = []
    if options is not None:
        from safeneuron_plugins.integrations.hf import SafeNeuronCallback

        callbacks.append(SafeNeuronCallback(options))

    from llamafactory.train.tuner import run_exp

    run_exp(rest, callbacks=callbacks)


def needs_torchrun() -> bool:
    """LLaMA-Factory's own rule (llamafactory.launcher.launch) for a distributed launch."""
    from llamafactory.extras.misc import get_device_count, is_env_enabled, use_kt, use_ray

    if is_env_enabled("USE_MCA"):
        os.environ["FORCE_TORCHRUN"] = "1"
    return is_env_enabled("FORCE_TORCHRUN") or (get_device_count() > 1 and not use_ray() and not use_kt())


def torchrun_command(argv: list[str]) -> list[str]:
    """The torchrun command LLaMA-Factory would build, with our worker module as the script."""
    from llamafactory.extras.misc import find_available_port

    nnodes = os.getenv("NNODES", "1")
    nproc = os.getenv("NPROC_PER_NODE")
    if nproc is None:
        from llamafactory.extras.misc import get_device_count

        nproc = str(get_device_count() or 1)
    master_addr = os.getenv("MASTER_ADDR", "127.0.0.1")
    master_port = os.getenv("MASTER_PORT", str(find_available_port()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", nnodes, "--nproc-per-node", nproc]
    rdzv_id = os.getenv("RDZV_ID")
    if rdzv_id is not None:
        min_nnodes, max_nnodes = os.getenv("MIN_NNODES"), os.getenv("MAX_NNODES")
        rdzv_nnodes = f"{min_nnodes}:{max_nnodes}" if min_nnodes and max_nnodes else nnodes
        cmd[cmd.index("--nnodes") + 1] = rdzv_nnodes
        cmd += ["--rdzv-id", rdzv_id, "--rdzv-backend", "c10d",
                "--rdzv-endpoint", f"{master_addr}:{master_port}",
                "--max-restarts", os.getenv("MAX_RESTARTS", "0")]
    else:
        cmd += ["--node-rank", os.getenv("NODE_RANK", "0"),
                "--master-addr", master_addr, "--master-port", master_port]
    return [*cmd, "-m", WORKER_MODULE, *argv]


def train(argv: list[str]) -> int:
    """``safeneuron-llamafactory train ARGS``: same arguments as ``llamafactory-cli train``."""
    warn_if_untested_version()
    ensure_torchaudio_importable()
    config = read_config(argv)
    # fail fast on a bad safeneuron_* key, before any launch; warns (once) when freezing is off
    prepare_train_args(deepcopy(config))
    if not needs_torchrun():
        run(config, warn=False)
        return 0

    from llamafactory.extras.misc import is_env_enabled

    env = deepcopy(os.environ)
    if is_env_enabled("OPTIM_TORCH", "1"):
        env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        env["TORCH_NCCL_AVOID_RECORD_STREAMS"] = "1"
    return subprocess.run(torchrun_command(argv), env=env, check=False).returncode


def _worker() -> None:
    ensure_torchaudio_importable()
    run(read_config(sys.argv[1:]), warn=False)  # the launching process has warned already


if __name__ == "__main__":
    _worker()
