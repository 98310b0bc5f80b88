"""solver.max_minutes: the run's length fitted to a time budget (a fake clock stands in for the
wall: each step takes one second of it, each evaluation five)."""
import json

import pytest

from detseg.config import ConfigError, load_config
from detseg.engine import time_budget
from detseg.engine.checkpoint import load_checkpoint
from detseg.engine.hooks import TimeBudget
from detseg.engine.time_budget import FractionPoints, fitted_length
from tests.engine.test_trainer import make_trainer, small_cfg

STEP_S, EVAL_S = 1.0, 5.0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fitted_length_spends_the_seconds_left_on_steps_and_evaluations():
    # 100 s, 1 s a step, two evaluations of 5 s to come: 90 steps
    assert fitted_length(0, 100.0, 1.0, 2, 5.0, 1000) == 90
    assert fitted_length(30, 100.0, 0.5, 1, 5.0, 1000) == 30 + 190
    # the ceiling holds however much time is left
    assert fitted_length(0, 1e6, 1.0, 2, 5.0, 1000) == 1000
    # no time left: the run ends with the step just done
    assert fitted_length(40, -3.0, 1.0, 1, 5.0, 1000) == 40
    assert fitted_length(40, 4.0, 1.0, 1, 5.0, 1000) == 40


def test_fraction_points_fire_once_each_however_the_length_moves():
    class T:  # the trainer's step and fitted length
        iter = 0
        s = type("S", (), {"max_iter": 100})()

    t = T()
    half = FractionPoints(0.5, t)
    assert half.total == 2 and FractionPoints(0.3, t).total == 4 and FractionPoints(2.0, t).total == 1
    fired = []
    for step in range(1, 101):
        t.iter = step
        if step == 45:
            t.s.max_iter = 88  # shorter: the half-way point is passed now
        if step == 47:
            t.s.max_iter = 100  # longer again: it does not come back
        if half():
            fired.append(step)
        if step == t.s.max_iter:
            break
    assert fired == [45, 100]


def test_bad_budget_is_one_line_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match="solver.max_minutes"):
        load_config(None, ["solver.max_minutes=0"])


def budget_trainer(cfg, shapes_data, clock):
    evaluations = []

    def evaluate(model):
        clock.now += EVAL_S
        evaluations.append(trainer.iter)
        return {"mIoU": 0.1 * len(evaluations)}

    trainer = make_trainer(cfg, shapes_data, evaluate=evaluate)
    real_forward = trainer.model.forward

    def forward(batch):
        clock.now += STEP_S
        return real_forward(batch)

    trainer.model.forward = forward
    return trainer, evaluations


def test_run_ends_within_the_budget_with_its_schedule_and_evaluations_fitted(tmp_path, shapes_data,
                                                                              monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "clock", clock)
    # a one-minute budget under a 1000-iteration ceiling evaluated at half and at the end
    cfg = small_cfg(tmp_path / "t", "solver.max_iter=1000", "solver.max_minutes=1", "solver.eval_period=500",
                    "solver.checkpoint_period=500", "solver.warmup_iters=0")
    trainer, evaluations = budget_trainer(cfg, shapes_data, clock)
    start = clock.now
    trainer.train()
    spent = clock.now - start
    assert trainer.hook(TimeBudget) is trainer.hooks[0]
    # 60 s: two evaluations of 5 s and the steps of 1 s between them, not a step more than fits
    assert 60 - STEP_S - EVAL_S < spent <= 60, spent
    assert trainer.iter == cfg.solver.max_iter < 1000
    assert len(evaluations) == 2 and evaluations[-1] == trainer.iter
    # the half-way evaluation moved with the length: half of the 60 steps that fit while no
    # evaluation had been timed (the fits after it made room for the final one)
    assert evaluations[0] == 30 and trainer.iter == 50
    assert trainer.lr < 0.01 * 0.01  # the cosine schedule ran to its (fitted) end
    best = load_checkpoint(str(tmp_path / "t" / "best.pth"))
    assert best["time_budget"]["max_iter"] == trainer.iter
    assert best["config"]["solver"]["max_iter"] == trainer.iter
    logged = [json.loads(line) for line in open(tmp_path / "t" / "metrics.jsonl")]
    assert logged[-1]["iter"] == trainer.iter


def test_resumed_run_keeps_its_length_and_the_minutes_already_spent(tmp_path, shapes_data, monkeypatch):
    monkeypatch.setenv("DETSEG_NO_PROGRESS", "1")
    clock = FakeClock()
    monkeypatch.setattr(time_budget, "clock", clock)
    over = ["solver.max_iter=1000", "solver.max_minutes=1", "solver.eval_period=500",
            "solver.checkpoint_period=333", "solver.warmup_iters=0"]  # every 20 of the 60 steps that fit
    first, _ = budget_trainer(small_cfg(tmp_path / "r", *over), shapes_data, clock)
    first.train(stop_at=20)  # killed right after the iteration-20 checkpoint
    fitted = first.s.max_iter
    clock.now += 500.0  # the time between the kill and the resume is not the run's
    second, evaluations = budget_trainer(small_cfg(tmp_path / "r", *over), shapes_data, clock)
    assert second.resume() and second.iter == 20
    start = clock.now
    second.train()
    assert second.s.max_iter <= fitted + 2
    # the second start spends what the first left: about 40 of the 60 s
    assert 40 - STEP_S - EVAL_S < clock.now - start <= 40 + STEP_S
    assert evaluations[-1] == second.iter
