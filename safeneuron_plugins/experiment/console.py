"""What the experiment shows on the console: progress bars and its own stage lines, nothing else.

- The Trainer's progress callback writes every log (trl's dozen DPO metrics per step) as a dict between
  the bars; :func:`metrics_to_file` sends those logs to ``train_log.jsonl`` in the model's folder (one JSON
  object per log, with its step) and puts the loss beside the bar.
- :func:`known_notices_filtered` drops the dependencies' notices that say nothing about the experiment,
  each matched by its logger or warning category and the start of its message, so any other warning
  still shows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path

#: (logger, start of the message) of notices that tell an experiment's user nothing
NOTICES = (
    # DeepSpeed, which transformers imports to save any model once it is installed, on a machine without a GPU
    ("DeepSpeed", "Setting accelerator to CPU"),
    # bitsandbytes on a CPU with AVX512-BF16 without the optional `kernels` package (the experiment has no 4-bit layer)
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
#: transformers 5 renamed gradient checkpointing to activation checkpointing; trl and the Trainer still call
#: the old names, each call a FutureWarning naming the new one
RENAMED = r"`(is_)?gradient_checkpointing\w*` is deprecated and will be removed in v6"


class _Drop(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


@contextlib.contextmanager
def known_notices_filtered():
    """While in the block (or the decorated function), :data:`NOTICES` and the :data:`RENAMED` warnings are
    dropped. A logger's filter holds also when the library creates its logger later (same name, same object)."""
    added = [(logging.getLogger(name), _Drop(start)) for name, start in NOTICES]
    for logger, drop in added:
        logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=RENAMED, category=FutureWarning)
            yield
    finally:
        for logger, drop in added:
            logger.removeFilter(drop)


def metrics_to_file(trainer, path: Path, progress: bool) -> None:
    """Replace ``trainer``'s console logging (its progress bar or printer callback) with a bar showing the
    loss (``progress``) and ``path``, a JSONL file of every log."""
    import transformers

    class MetricsFile(transformers.TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}, default=str) + "\n")

    class LossBar(transformers.ProgressCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and "loss" in (logs or {}):
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    trainer.remove_callback(transformers.ProgressCallback)
    trainer.remove_callback(transformers.PrinterCallback)
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.add_callback(MetricsFile())
    if progress:
        trainer.add_callback(LossBar())
