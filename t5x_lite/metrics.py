"""A run's metrics: `metrics.jsonl`, TensorBoard events and a progress bar, from process 0 only.

    with metrics.MetricsWriter(workdir, resume_step=0, total_steps=1000, progress_bar=True) as w:
        w.advance(step, loss=loss)                 # the progress bar, every step
        w.write(step, {"loss": loss, "mfu": mfu})  # a line of metrics.jsonl + TensorBoard scalars

`metrics.jsonl` holds one JSON object per logged step, with `step` and the metrics. A resumed run
(`resume_step` > 0) first drops the lines past the restored step, which it will log again, so the
file reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import numpy as np

FILENAME = "metrics.jsonl"


def scalar(value) -> int | float | bool:
    """A 0-d array or number as a JSON-ready Python scalar."""
    value = np.asarray(value)
    return value.item() if value.dtype.kind in "iub" else float(value)


log = logging.getLogger(__name__)

CONSOLE_LOSSES = ("loss", "eval_loss")  # shown at every logged step
CONSOLE_COUNTS = ("truncated_examples", "skipped_records")  # shown when not zero


class MetricsWriter:
    """Writes `metrics.jsonl` and TensorBoard events under `workdir` (see the module doc)."""

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        resume_step: int = 0,
        total_steps: int | None = None,
        progress_bar: bool = False,
    ):
        self.enabled = jax.process_index() == 0
        self.path = Path(workdir) / FILENAME
        self.progress = None
        if not self.enabled:
            return
        if self.path.exists():  # drop lines past the restored step: they will be redone
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"))
        if progress_bar:
            from tqdm.auto import tqdm

            self.progress = tqdm(
                total=total_steps, initial=resume_step, desc="train", dynamic_ncols=True
            )

    def advance(self, step: int, **postfix: float) -> None:
        """One step done: move the progress bar (if any) and show `postfix` beside it."""
        if self.progress is not None:
            self.progress.update(step - self.progress.n)
            self.progress.set_postfix({k: f"{v:.3f}" for k, v in postfix.items()})

    def write(self, step: int, metrics: dict) -> dict:
        """Append `{"step": step, **metrics}` to metrics.jsonl and TensorBoard, and show the
        losses and any truncated or skipped records on the console (above the progress bar
        if there is one, else in the log); returns it."""
        record = {"step": step, **{k: scalar(v) for k, v in metrics.items()}}
        if not self.enabled:
            return record
        shown = [f"{k} {record[k]:.4f}" for k in CONSOLE_LOSSES if k in record]
        shown += [f"{k} {record[k]:,.0f}" for k in CONSOLE_COUNTS if record.get(k)]
        if shown:
            line = f"step {step}: " + ", ".join(shown)
            if self.progress is not None:
                self.progress.write(line)
            else:
                log.info(line)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step":
                self.tb.add_scalar(k, v, step)
        self.tb.flush()
        return record

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            if self.progress is not None:
                self.progress.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
