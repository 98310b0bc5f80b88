"""A run fitted to minutes instead of iterations (``solver.max_minutes``).

Ultralytics' ``time`` argument in our trainer's terms: the same recipe should end in the same
minutes on a CPU that runs bfloat16 natively and on one that does not, so the schedule's length is
fitted to the measured speed of the steps. Every ``REFIT`` steps the ``TimeBudget`` hook
(``detseg.engine.hooks``; this module is its arithmetic) sets
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

import math
import time


clock = time.perf_counter  # the budget's clock (the tests' fake one replaces it)
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
        return max(1, math.ceil(1 / self.fraction - 1e-9))

    def __call__(self) -> bool:
        now = self.index()
        due, self.fired = now > self.fired, max(self.fired, now)
        return due
