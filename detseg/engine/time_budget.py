"""A run fitted to minutes instead of iterations (``solver.max_minutes``).

Ultralytics' ``time`` argument in our trainer's terms: the same recipe should end in the same
minutes on a CPU that runs bfloat16 natively and on one that does not, so the schedule's length is
fitted to the measured speed of the steps. Every ``REFIT`` steps ``TimeBudget`` sets
``solver.max_iter`` to the iterations that still fit in the budget: the seconds left, less the
evaluations still to come (each as long as the last one took), divided by the recent seconds per
step. ``max_iter`` as configured is the ceiling. The cosine / step schedule follows the fitted
length, and evaluations and checkpoints come at the fractions of it that ``eval_period`` and
``checkpoint_period`` are of the ceiling (a recipe that evaluates at half and at the end still
does, once each, however the length moves).

The budget covers the training loop (steps, checkpoints, the evaluations in it, the final one
included), not what runs before it (data generation, building the model). A resumed run goes on
with the minutes its checkpoint recorded as spent.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Optional

from .. import comm as dist
from .hooks import EvalHook, HookBase, PeriodicCheckpointer, PeriodicHook

logger = logging.getLogger(__name__)

_clock = time.perf_counter  # the tests' fake clock replaces it
REFIT = 10  # steps between two fits of the run's length
WINDOW = 30  # recent steps whose mean time predicts the next ones


def fitted_length(done: int, seconds_left: float, step_s: float, evals_left: int, eval_s: float,
                  ceiling: int) -> int:
    """The longest run (``done`` <= length <= ``ceiling`` steps) whose remaining steps, at
    ``step_s`` seconds each, and ``evals_left`` evaluations of ``eval_s`` seconds fit in
    ``seconds_left``."""
    room = seconds_left - evals_left * eval_s
    if step_s <= 0:
        return ceiling
    return max(done, min(ceiling, done + math.floor(room / step_s)))


class FractionPoints:
    """The points of a ``PeriodicHook`` as fractions of the run's length: the k-th at
    ``k * fraction * length`` steps, each due once (a length that moves after a point fired does
    not fire it again), the last at the end."""

    def __init__(self, fraction: float, trainer):
        self.fraction, self.trainer = fraction, trainer
        self.fired = self.index()

    def index(self) -> int:
        """How many points lie at or before the current step."""
        t = self.trainer
        return math.floor(t.iter / max(1.0, self.fraction * t.s.max_iter) + 1e-9)

    @property
    def total(self) -> int:
        """The points of a whole run, the one at its end included."""
        return math.ceil(1 / self.fraction - 1e-9) if self.fraction < 1 else 1

    def __call__(self) -> bool:
        now = self.index()
        due, self.fired = now > self.fired, max(self.fired, now)
        return due


class TimeBudget(HookBase):
    """Fits ``trainer.s.max_iter`` (and the step schedule's milestones) to ``minutes`` of training
    loop, and places evaluations and checkpoints at fractions of it. Registered first, so that its
    step timing sees the other hooks' work (an evaluation, a checkpoint) as part of the step it
    follows."""

    def __init__(self, minutes: float, solver):
        self.budget_s = 60.0 * minutes
        # the configured schedule: the ceiling and what scales with the fitted length
        self.ceiling, self.steps = solver.max_iter, list(solver.steps)
        self.periods = {EvalHook: solver.eval_period, PeriodicCheckpointer: solver.checkpoint_period}
        self.spent_before = 0.0  # loop seconds of earlier starts of this run (resume)
        self.eval_s: Optional[float] = None  # the last evaluation's seconds
        self.fitted: Optional[int] = None
        self.evaluations: Optional[FractionPoints] = None
        self._start = self._last = None
        self._intervals: deque = deque(maxlen=WINDOW)
        self._evaluated = False  # an evaluation ran inside the current interval

    def apply(self, length: int) -> None:
        """Set the run's length to ``length`` steps and scale the step schedule's milestones."""
        t, self.fitted = self.trainer, length
        t.s.max_iter = length
        t.s.steps = [round(s * length / self.ceiling) for s in self.steps]

    def spent(self) -> float:
        """Loop seconds used so far, earlier starts included."""
        return self.spent_before + (_clock() - self._start if self._start is not None else 0.0)

    def refit(self) -> None:
        t = self.trainer
        step_s = sum(self._intervals) / len(self._intervals)
        # before the first evaluation its cost is unknown and counted as nothing: the fits after
        # it shorten the run by what the evaluations still to come will take
        evals_left = self.evaluations.total - self.evaluations.fired if self.evaluations else 0
        eval_s = self.eval_s or 0.0
        length = fitted_length(t.iter, self.budget_s - self.spent(), step_s, evals_left, eval_s, self.ceiling)
        length = dist.broadcast_object(length)  # every rank stops at the same step
        if length == self.fitted:
            return
        if self.fitted is None or abs(length - self.fitted) > 0.05 * self.fitted:
            logger.info("time budget %.1f min: %.3f s a step%s -> %d iterations", self.budget_s / 60, step_s,
                        f", {eval_s:.1f} s an evaluation" if self.eval_s is not None else "", length)
        self.apply(length)

    # -- hook points -----------------------------------------------------------------------------
    def before_train(self) -> None:
        t = self.trainer
        self._start = self._last = _clock()
        if self.fitted is not None:  # resumed: the length the checkpoint was fitted to
            self.apply(self.fitted)
        for kind, period in self.periods.items():
            hook = t.hook(kind)
            if isinstance(hook, PeriodicHook):
                hook.due = FractionPoints(period / self.ceiling, t)
                if kind is EvalHook:
                    self.evaluations = hook.due

    def after_step(self) -> None:
        now = _clock()
        if not self._evaluated:  # an interval with an evaluation in it is not a step's time
            self._intervals.append(now - self._last)
        self._last, self._evaluated = now, False
        t = self.trainer
        if t.iter % REFIT == 0 and t.iter < t.s.max_iter:
            self.refit()  # with no time left, the step just done becomes the last

    def after_eval(self, metrics: dict, improved: Optional[bool]) -> None:
        self.eval_s = _clock() - self._last
        self._evaluated = True

    def state_dict(self) -> dict:
        return {"time_budget": {"spent_s": self.spent(), "max_iter": self.fitted, "eval_s": self.eval_s}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("time_budget") or {}
        self.spent_before = float(saved.get("spent_s", 0.0))
        self.fitted = saved.get("max_iter")
        self.eval_s = saved.get("eval_s")
