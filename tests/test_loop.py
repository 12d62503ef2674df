"""`loop.run` drives any step function: the cadence of logs, evaluations and saves (against the
step numbers a plain Python loop picks), SIGTERM (save at the current step, then return), and the
non-finite guard (raises, naming the last checkpoint, without saving the bad state)."""

import json
import logging
import os
import signal

import pytest

from t5x_lite import loop, metrics


class Recorder:
    """A step function over an int state, and the loop's callbacks, recording their calls."""

    def __init__(self, losses=None, sigterm_at=None):
        self.losses = losses or {}
        self.sigterm_at = sigterm_at
        self.saved, self.evaluated = [], []

    def step(self, state):
        state += 1
        if state == self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return state, {"loss": self.losses.get(state, 1.0 / state)}

    def save(self, step, state):
        assert step == state
        self.saved.append(step)

    def evaluate(self, state):
        self.evaluated.append(state)
        return {"eval_loss": 0.5}


def _run(tmp_path, rec, *, start=0, total=10, log=3, ckpt=4, eval_every=5):
    cadence = loop.Cadence(total, log_every=log, checkpoint_every=ckpt, eval_every=eval_every)
    with metrics.MetricsWriter(tmp_path, resume_step=start) as writer:
        return loop.run(
            start,
            rec.step,
            start=start,
            cadence=cadence,
            writer=writer,
            save=rec.save,
            last_saved=lambda: rec.saved[-1] if rec.saved else None,
            extra_metrics=lambda step: {"seen": step},
            evaluate=rec.evaluate,
            where="ckpts/",
        )


def _logged(tmp_path):
    lines = (tmp_path / metrics.FILENAME).read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("start", [0, 2, 7])
def test_cadence(tmp_path, start):
    rec = Recorder()
    result = _run(tmp_path, rec, start=start)
    steps = range(start + 1, 11)
    assert result.step == 10 and result.state == 10 and not result.preempted
    assert rec.saved == [s for s in steps if s % 4 == 0 or s == 10]
    assert rec.evaluated == [s for s in steps if s % 5 == 0]
    logged = _logged(tmp_path)
    assert [r["step"] for r in logged] == [s for s in steps if s % 3 == 0 or s % 5 == 0 or s == 10]
    for r in logged:
        assert r["seen"] == r["step"] and r["loss"] == pytest.approx(1.0 / r["step"])
        assert ("eval_loss" in r) == (r["step"] % 5 == 0)
    assert result.metrics == {"loss": pytest.approx(0.1)}


@pytest.mark.parametrize("eval_every,expected", [(5, [5, 10, 12]), (0, [])])
def test_evaluates_at_the_last_step_too_unless_eval_is_off(tmp_path, eval_every, expected):
    rec = Recorder()
    _run(tmp_path, rec, total=12, eval_every=eval_every)
    assert rec.evaluated == expected
    assert [r["step"] for r in _logged(tmp_path) if "eval_loss" in r] == expected


def test_sigterm_saves_the_current_step_and_returns(tmp_path):
    rec = Recorder(sigterm_at=6)
    result = _run(tmp_path, rec)
    assert result.preempted and result.step == 6
    assert rec.saved == [4, 6]
    assert signal.getsignal(signal.SIGTERM) is not None  # the previous handler is back


def test_sigterm_on_a_checkpoint_step_saves_once(tmp_path):
    rec = Recorder(sigterm_at=8)
    result = _run(tmp_path, rec)
    assert result.preempted and rec.saved == [4, 8]


def test_non_finite_loss_raises_and_keeps_the_last_checkpoint(tmp_path):
    rec = Recorder(losses={6: float("nan")})
    with pytest.raises(loop.NonFiniteLossError, match=r"step 6.*checkpoint \(step 4\) in ckpts/"):
        _run(tmp_path, rec)
    assert rec.saved == [4]
    assert [r["step"] for r in _logged(tmp_path)] == [3, 5]


def test_resumed_writer_drops_lines_past_the_restored_step(tmp_path):
    with metrics.MetricsWriter(tmp_path) as w:
        for step in (1, 2, 3, 4):
            w.write(step, {"loss": step})
    with metrics.MetricsWriter(tmp_path, resume_step=2) as w:
        w.write(3, {"loss": 30})
    assert [(r["step"], r["loss"]) for r in _logged(tmp_path)] == [(1, 1), (2, 2), (3, 30)]


@pytest.mark.parametrize("progress_bar", [False, True])
def test_console_shows_losses_and_truncation_with_or_without_the_bar(
    tmp_path, progress_bar, caplog, capsys
):
    with caplog.at_level(logging.INFO, logger="t5x_lite.metrics"):
        with metrics.MetricsWriter(tmp_path, total_steps=4, progress_bar=progress_bar) as w:
            w.write(2, {"loss": 1.5, "truncated_examples": 0, "learning_rate": 0.1})
            w.write(4, {"loss": 1.25, "eval_loss": 2.0, "truncated_examples": 3})
    captured = capsys.readouterr()
    shown = caplog.text + captured.err + captured.out
    assert "step 2: loss 1.5000" in shown and "truncated" not in shown.split("step 4")[0]
    assert "step 4: loss 1.2500, eval_loss 2.0000, truncated_examples 3" in shown
