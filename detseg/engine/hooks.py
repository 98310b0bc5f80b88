"""Trainer hooks, in the manner of detectron2's ``HookBase``: behaviour around the optimisation
step that a user adds, removes or replaces without editing ``Trainer``.

    class PrintLR(HookBase):
        def after_step(self):
            if self.trainer.iter % 100 == 0:
                print(self.trainer.iter, self.trainer.lr)

    trainer.register_hooks([PrintLR()])

``default_hooks`` are what ``tools/train.py`` runs, in this order (each step: log, checkpoint,
evaluate): ``MetricsWriter`` (metrics.jsonl, TensorBoard, curves.png), ``PeriodicCheckpointer``,
``EvalHook`` (evaluation, best.pth and diagnostics, early stopping) and ``PlateauSchedule``
(the learning rate scaled down when the best metric stops improving), ``DeferredReweighting`` (a
head's class weights switched on at ``loss.class_weight_from``); with ``solver.max_minutes``
``TimeBudget`` (arithmetic in detseg.engine.time_budget) first, fitting the run's length to the minutes.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from typing import Callable, Optional

from .. import comm as dist
from . import time_budget as budget

logger = logging.getLogger(__name__)


class EarlyStop(Exception):
    """Raised by a hook to end training early (the trainer saves a checkpoint and returns)."""


class HookBase:
    """Base of the trainer's hooks. ``self.trainer`` is set when the hook is registered; each
    method is called at its point of the run (all default to doing nothing)."""

    trainer = None

    def before_train(self) -> None:
        """Once, before the first step of this run (after a resume, too)."""

    def after_step(self) -> None:
        """After each optimisation step; ``trainer.iter`` is the number of steps done,
        ``trainer.lr`` / ``trainer.losses`` / ``trainer.elapsed`` describe the step."""

    def after_train(self) -> None:
        """Once, after the last step (not after a failure)."""

    def after_eval(self, metrics: dict, improved: Optional[bool]) -> None:
        """After an evaluation: ``improved`` tells whether the best metric improved (None: the
        metrics lack it)."""

    def write(self, record: dict) -> None:
        """A metrics record ``{"iter": i, name: value, ...}`` (training losses, evaluation)."""

    def after_restore(self) -> None:
        """The trainer's iteration is set: restored from a checkpoint, or 0 on a fresh start."""

    def state_dict(self) -> dict:
        """Entries this hook keeps in every checkpoint (top-level keys)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Read its entries back from a checkpoint's ``state``."""


class MetricsWriter(HookBase):
    """``metrics.jsonl`` (one JSON record a line), TensorBoard scalars in ``tb/`` and, at the end,
    ``curves.png``; rank 0 only. Logs the training losses every ``log_period`` steps and at the
    last one."""

    def __init__(self, log_period: int):
        self.log_period = log_period
        self.tb = None

    @property
    def path(self) -> str:
        return os.path.join(self.trainer.output_dir, "metrics.jsonl")

    def before_train(self) -> None:
        if dist.is_main() and self.tb is None:
            self.tb = _tensorboard_writer(self.trainer.output_dir)

    def after_step(self) -> None:
        t = self.trainer
        if t.iter % self.log_period == 0 or t.iter == t.s.max_iter:
            t.log({"iter": t.iter, "lr": t.lr, "time": t.elapsed, **{k: v.item() for k, v in t.losses.items()}})

    def write(self, record: dict) -> None:
        if not dist.is_main():
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "iter" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record.get("iter", 0))
            self.tb.flush()

    def after_restore(self) -> None:
        """Drop the rows logged after the iteration the run restarts from (it logs those
        iterations again) and a torn last line."""
        if not dist.is_main() or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if int(row.get("iter", 0)) <= self.trainer.iter:
                    kept.append(line if line.endswith("\n") else line + "\n")
        from ..utils import atomic_write
        with atomic_write(self.path, "w") as f:
            f.writelines(kept)

    def after_train(self) -> None:
        if dist.is_main():
            from ..visualize import plot_curves
            plot_curves(self.path, os.path.join(self.trainer.output_dir, "curves.png"))


class PeriodicHook(HookBase):
    """A hook that acts every ``period`` steps and at the last one. ``due``, when set, decides
    instead of the period (``TimeBudget`` sets it: points at fractions of a fitted length)."""

    def __init__(self, period: int):
        self.period = period
        self.due: Optional[Callable[[], bool]] = None

    def is_due(self) -> bool:
        t = self.trainer
        periodic = self.due() if self.due is not None else t.iter % self.period == 0
        return periodic or t.iter == t.s.max_iter


class PeriodicCheckpointer(PeriodicHook):
    """``model_<iter>.pth`` every ``period`` steps and at the last one (the newest
    ``solver.keep_last`` kept)."""

    def after_step(self) -> None:
        if self.is_due():
            self.trainer.save()


class EvalHook(PeriodicHook):
    """Evaluates every ``period`` steps and at the last one: logs the metrics, keeps the best
    checkpoint (``best.pth``, its figures in ``diagnostics/``) by ``metric`` (``mode`` max or
    min), and stops the run (``EarlyStop``) after ``patience`` evaluations without improvement."""

    def __init__(self, evaluate: Callable, period: int, metric: str, mode: str = "max",
                 patience: Optional[int] = None):
        super().__init__(period)
        self.evaluate, self.metric, self.mode = evaluate, metric, mode
        self.patience = patience
        self.best: Optional[float] = None
        self.bad_evals = 0  # evaluations without improvement
        self.last: Optional[dict] = None

    def after_step(self) -> None:
        if self.is_due():
            self.last = self.run()

    def run(self) -> dict:
        """Evaluate now; returns the metrics."""
        import torch

        t = self.trainer
        t.model.eval()
        with torch.no_grad():
            metrics = self.evaluate(t.model)
        t.train_mode()
        t.log({"iter": t.iter, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        value = metrics.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            t.after_eval(metrics, None)
            return metrics
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
        t.after_eval(metrics, better)  # before best.pth is written: it holds the hooks' state
        if better:
            t.save("best.pth")
            self._write_diagnostics(metrics)
        elif self.patience is not None and self.bad_evals >= self.patience:
            raise EarlyStop(f"{self.metric} did not improve for {self.bad_evals} evaluations")
        return metrics

    def _write_diagnostics(self, metrics: dict) -> None:
        """The best checkpoint's figures and numbers in ``diagnostics/`` (evaluation.diagnostics)."""
        if not dist.is_main() or not any(k.endswith("diagnostics") for k in metrics):
            return
        from ..utils import write_json_atomic
        from ..visualize import write_diagnostics
        folder = os.path.join(self.trainer.output_dir, "diagnostics")
        write_diagnostics(metrics, folder)
        numbers = {k: v for k, v in metrics.items() if k.endswith("diagnostics")}
        write_json_atomic({"iter": self.trainer.iter, **numbers}, os.path.join(folder, "diagnostics.json"))

    def state_dict(self) -> dict:
        return {"best_metric": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_evals = state.get("best_metric"), int(state.get("bad_evals", 0))


class PlateauSchedule(HookBase):
    """Scales the learning rate by ``factor`` after ``patience`` evaluations without improvement
    (the trainer's ``lr_scale``). Switched off (``enabled=False``) it still counts evaluations
    without improvement and keeps its checkpoint entries, so that a run can resume with
    ``solver.plateau`` switched on."""

    def __init__(self, patience: int, factor: float, enabled: bool = True):
        self.patience, self.factor, self.enabled = patience, factor, enabled
        self.scale, self.bad = 1.0, 0

    def after_eval(self, metrics: dict, improved: Optional[bool]) -> None:
        if improved is None:
            return
        if improved:
            self.bad = 0
            return
        self.bad += 1
        if self.enabled and self.bad >= self.patience:
            self.scale *= self.factor
            self.bad = 0
            self.trainer.lr_scale = self.scale
            logger.info("metric plateaued: lr scaled by %g", self.scale)

    def state_dict(self) -> dict:
        return {"scheduler": {"plateau_scale": self.scale, "plateau_bad": self.bad}}

    def load_state_dict(self, state: dict) -> None:
        scheduler = state.get("scheduler") or {}
        self.scale = float(scheduler.get("plateau_scale", 1.0))
        self.bad = int(scheduler.get("plateau_bad", 0))
        self.trainer.lr_scale = self.scale


class DeferredReweighting(HookBase):
    """Deferred re-weighting (Cao et al. 2019): each class-weighted head's weights apply from
    ``loss.class_weight_from`` of the run's length on, plain loss before. Set before every step
    from the iteration and the current ``max_iter`` (so a resumed run, or one whose length a time
    budget fits, switches at the right step); logs the step it switches at."""

    def __init__(self):
        self.heads: list = []  # the model's class-weighted heads, found at the start of each run

    def _set(self) -> None:
        t = self.trainer
        for head in self.heads:
            active = t.iter >= head.class_weight_start(t.s.max_iter)
            if active and not head.class_weight_active:
                logger.info("%s: class weights on from iteration %d (loss.class_weight_from %g)",
                            type(head).__name__, t.iter, head.loss_settings.class_weight_from)
            head.class_weight_active = active

    def before_train(self) -> None:
        from ..modeling.losses import ClassWeightedLoss
        self.heads = [m for m in self.trainer.model.modules()
                      if isinstance(m, ClassWeightedLoss) and m.class_weighted]
        self._set()
        for head in self.heads:
            if not head.class_weight_active:
                logger.info("%s: plain loss until iteration %d, class weights after (deferred re-weighting)",
                            type(head).__name__, head.class_weight_start(self.trainer.s.max_iter))

    def after_step(self) -> None:
        self._set()


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
        self._start = self._last = None
        self._intervals: deque = deque(maxlen=budget.WINDOW)
        self._evaluated = False  # an evaluation ran inside the current interval

    def apply(self, length: int) -> None:
        """Set the run's length to ``length`` steps and scale the step schedule's milestones."""
        t, self.fitted = self.trainer, length
        t.s.max_iter = length
        t.s.steps = [round(s * length / self.ceiling) for s in self.steps]

    def spent(self) -> float:
        """Loop seconds used so far, earlier starts included."""
        return self.spent_before + (budget.clock() - self._start if self._start is not None else 0.0)

    def refit(self) -> None:
        t = self.trainer
        step_s = sum(self._intervals) / len(self._intervals)
        # before the first evaluation its cost is unknown and counted as nothing: the fits after
        # it shorten the run by what the evaluations still to come will take
        points = getattr(t.hook(EvalHook), "due", None)
        evals_left = points.total - points.fired if points is not None else 0
        eval_s = self.eval_s or 0.0
        length = budget.fitted_length(t.iter, self.budget_s - self.spent(), step_s, evals_left, eval_s, self.ceiling)
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
        self._start = self._last = budget.clock()
        if self.fitted is not None:  # resumed: the length the checkpoint was fitted to
            self.apply(self.fitted)
        for kind, period in self.periods.items():
            hook = t.hook(kind)
            if isinstance(hook, PeriodicHook):
                hook.due = budget.FractionPoints(period / self.ceiling, t)

    def after_step(self) -> None:
        now = budget.clock()
        if not self._evaluated:  # an interval with an evaluation in it is not a step's time
            self._intervals.append(now - self._last)
        self._last, self._evaluated = now, False
        t = self.trainer
        if t.iter % budget.REFIT == 0 and t.iter < t.s.max_iter:
            self.refit()  # with no time left, the step just done becomes the last

    def after_eval(self, metrics: dict, improved: Optional[bool]) -> None:
        self.eval_s = budget.clock() - self._last
        self._evaluated = True

    def state_dict(self) -> dict:
        return {"time_budget": {"spent_s": self.spent(), "max_iter": self.fitted, "eval_s": self.eval_s}}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("time_budget") or {}
        self.spent_before = float(saved.get("spent_s", 0.0))
        self.fitted = saved.get("max_iter")
        self.eval_s = saved.get("eval_s")


def default_hooks(cfg, evaluate: Optional[Callable]) -> list[HookBase]:
    """The hooks ``solver`` describes: the metrics log, checkpoints, evaluation (when
    ``evaluate`` is given) and, with ``solver.plateau``, the plateau schedule."""
    s = cfg.solver
    hooks: list[HookBase] = [MetricsWriter(s.log_period), PeriodicCheckpointer(s.checkpoint_period)]
    if s.max_minutes is not None:  # first: its step timing then spans the other hooks' work
        hooks.insert(0, TimeBudget(s.max_minutes, s))
    if evaluate is not None:
        hooks.append(EvalHook(evaluate, s.eval_period, s.best_metric, s.best_mode, s.patience))
    hooks.append(PlateauSchedule(s.plateau_patience, s.plateau_factor, enabled=s.plateau))
    hooks.append(DeferredReweighting())
    return hooks


def _tensorboard_writer(output_dir: str):
    """A TensorBoard SummaryWriter into ``<output_dir>/tb`` (tensorboard is a dependency; a
    broken install is a warning, not a failed run)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        logger.warning("TensorBoard logging off: %s (pip install tensorboard)", e)
        return None
    return SummaryWriter(os.path.join(output_dir, "tb"))
