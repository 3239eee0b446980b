"""What the experiment shows while a model trains: a progress bar with the loss beside it, nothing else.

The Trainer's own progress callback writes every log (trl's dozen DPO metrics per step) as a dict
between the bars; here those logs go to ``train_log.jsonl`` in the model's folder instead (one JSON
object per log, with its step), and the bar shows the loss."""

from __future__ import annotations

import json
from pathlib import Path


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
