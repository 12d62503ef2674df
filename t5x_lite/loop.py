"""The loop every training program shares: steps, logging, evaluation, checkpoints, SIGTERM and
the non-finite guard, around any step function.

    state, last = loop.run(
        state,
        step_fn,                        # state -> (state, metrics with a "loss")
        start=restored_step,
        cadence=loop.Cadence(total_steps=1000, log_every=10, checkpoint_every=100),
        writer=metrics.MetricsWriter(workdir, resume_step=restored_step),
        save=lambda step, state: checkpoints.save(step, ...),
        last_saved=lambda: checkpoints.latest_step,
        extra_metrics=lambda step: {"tokens_per_second": ...},   # at each logged step
        evaluate=lambda state: {"eval_loss": ...},               # every eval_every steps
    )

`step_fn` pulls its own batch (a supervised step reads the data iterator, a PPO step makes
rollouts), so the loop knows nothing of data or models. At the end of each step it logs every
`log_every` steps (and at evaluation steps and the last step), evaluates every `eval_every`
steps and at the last (unless `eval_every` is 0), and saves every `checkpoint_every` steps and
at the last. A SIGTERM (a preempted job) is noted, and at the end of the current step the state
is saved and the loop returns. A non-finite loss raises `NonFiniteLossError`, naming the last
checkpoint, which is kept.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
from collections.abc import Callable
from typing import Any, TypeVar

from t5x_lite.metrics import MetricsWriter, scalar

log = logging.getLogger(__name__)

State = TypeVar("State")


class NonFiniteLossError(FloatingPointError):
    pass


@dataclasses.dataclass(frozen=True)
class Cadence:
    """How many steps to run, and how often to log, evaluate (0: never) and save."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int = 0


@dataclasses.dataclass
class Result:
    state: Any
    step: int  # the last step run
    metrics: dict  # the last step's metrics, as Python scalars
    preempted: bool  # stopped early by SIGTERM (after saving)


def run(
    state: State,
    step_fn: Callable[[State], tuple[State, dict]],
    *,
    start: int,
    cadence: Cadence,
    writer: MetricsWriter,
    save: Callable[[int, State], None],
    last_saved: Callable[[], int | None],
    extra_metrics: Callable[[int], dict] | None = None,
    evaluate: Callable[[State], dict] | None = None,
    where: str = "",
) -> Result:
    """Run steps start+1 .. cadence.total_steps (see the module doc). `where` names the
    checkpoint directory in messages."""
    stop: dict[str, int | None] = {"signal": None}
    previous = signal.signal(signal.SIGTERM, lambda signum, _: stop.update(signal=signum))
    step, metrics = start, {}
    try:
        while step < cadence.total_steps:
            state, metrics = step_fn(state)
            step += 1
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss ({loss}) at step {step}; stopping. The last good "
                    f"checkpoint (step {last_saved()}) in {where} is kept: lower "
                    "optim.learning_rate or check the data, then rerun to resume"
                )
            writer.advance(step, loss=loss)
            last = step == cadence.total_steps
            is_eval = (
                evaluate is not None
                and cadence.eval_every > 0
                and (step % cadence.eval_every == 0 or last)
            )
            if step % cadence.log_every == 0 or is_eval or last:
                logged = dict(metrics, **(extra_metrics(step) if extra_metrics else {}))
                if is_eval:
                    logged.update(evaluate(state))
                writer.write(step, logged)
            if step % cadence.checkpoint_every == 0 or last:
                save(step, state)
            if stop["signal"] is not None:
                log.warning("SIGTERM: saving a checkpoint at step %d and exiting", step)
                if last_saved() != step:
                    save(step, state)
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    metrics = {k: scalar(v) for k, v in metrics.items()}
    return Result(state, step, metrics, preempted=stop["signal"] is not None)


def run_in(
    workdir,
    checkpoints,
    state: State,
    step_fn: Callable[[State], tuple[State, dict]],
    *,
    start: int,
    cadence: Cadence,
    save: Callable[[int, State], None],
    progress_bar: bool = False,
    extra_metrics: Callable[[int], dict] | None = None,
    evaluate: Callable[[State], dict] | None = None,
) -> Result:
    """`run` as a training program calls it: with `workdir`'s `MetricsWriter` and the run's
    `checkpoints` (a `checkpoint.TrainCheckpoints`), both closed at the end."""
    writer = MetricsWriter(
        workdir, resume_step=start, total_steps=cadence.total_steps, progress_bar=progress_bar
    )
    with checkpoints, writer:
        return run(
            state,
            step_fn,
            start=start,
            cadence=cadence,
            writer=writer,
            save=save,
            last_saved=lambda: checkpoints.latest_step,
            extra_metrics=extra_metrics,
            evaluate=evaluate,
            where=str(checkpoints.directory),
        )
