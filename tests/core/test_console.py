"""What the experiment prints: the dependencies' known notices are dropped (each matched by logger or
category and the start of its message, the real messages checked here), anything else still shows."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import transformers

from safeneuron_plugins.experiment.console import known_notices_filtered

CPU_NOTICE = "Setting accelerator to CPU"


def _deepspeed_import_output(filtered: bool) -> str:
    code = ("import torch; from safeneuron_plugins.experiment.console import known_notices_filtered\n"
            + ("with known_notices_filtered():\n    import deepspeed\n" if filtered else "import deepspeed\n")
            + "print('imported', deepspeed.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout + out.stderr


def test_deepspeed_cpu_notice_is_dropped_only_inside_the_block():
    plain, quiet = _deepspeed_import_output(False), _deepspeed_import_output(True)
    assert CPU_NOTICE in plain  # the real notice, on this GPU-less machine
    assert CPU_NOTICE not in quiet and "imported" in quiet


def test_renamed_gradient_checkpointing_warnings_are_dropped_and_others_kept(tmp_path):
    def caught(block) -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            block()
        return [str(w.message) for w in seen]

    def make_args():
        transformers.TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing=True, report_to="none")

    def filtered():
        with known_notices_filtered():
            make_args()
            warnings.warn("`something_else` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1)

    assert any("gradient_checkpointing" in m for m in caught(make_args))  # the real warning the filter is for
    assert caught(filtered) == ["`something_else` is deprecated and will be removed in v6."]


def test_logger_filters_match_the_message_start_and_are_removed_after():
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    bnb.addHandler(handler)
    try:
        with known_notices_filtered():
            bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module")
            bnb.warning("a 4-bit layer could not be loaded")
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "after the block")
    finally:
        bnb.removeHandler(handler)
    assert [r.getMessage() for r in records] == [
        "a 4-bit layer could not be loaded", "Failed to load CPU gemm_4bit_forward from kernels-community: after the block."]
