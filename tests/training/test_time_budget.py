"""TimeBudget and TrainConfig.max_minutes: the horizon is projected from the measured step time and the cosine
ends there."""

from __future__ import annotations

import json

import pytest
from test_trainer import make, repetitive_data  # same folder: pytest puts it on sys.path

from training import trainer as trainer_module
from training.config import ConfigError, TrainConfig
from training.optim import warmup_cosine_factor
from training.time_budget import TimeBudget


class FakeClock:
    def __init__(self, tick: float = 0.0) -> None:
        self.now = 0.0
        self.tick = tick  # seconds added by every reading

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_horizon_fits_the_budget_after_the_warmup_and_probe():
    clock = FakeClock()
    budget = TimeBudget(1.0, start_step=0, warmup_steps=3, warmup_fraction=0.1, probe_steps=4, reserve=0.0,
                        clock=clock)
    for step in (1, 2, 3):  # slow, untimed warm-up: 3 steps and at least 6 s (a tenth)
        clock.now += 3.0
        assert not budget.observe(step)
    assert budget.horizon(3, 1000) == 1000  # nothing timed yet
    due = []
    for step in range(4, 9):  # 1 s per step from here; the probe ends after 4 timed steps
        clock.now += 1.0
        due.append(budget.observe(step))
    assert due == [False, False, False, True, False] and budget.projected
    assert budget.seconds_per_step(8) == pytest.approx(1.0)
    # 14 s used, 46 s left at 1 s per step: 46 more steps
    assert budget.horizon(8, 1000) == 54
    assert budget.horizon(8, 20) == 20  # never past the planned end
    assert budget.may_lengthen() and not budget.expired()
    clock.now = 31.0
    assert not budget.may_lengthen()
    clock.now = 60.0
    assert budget.expired()
    assert budget.horizon(8, 1000) == 9  # out of time: at least one more step


def test_set_schedule_horizon_scales_the_warmup_without_drift():
    from torch import nn, optim

    from training.optim import set_schedule_horizon, warmup_cosine_schedule

    opt = optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = warmup_cosine_schedule(opt, warmup_steps=100, total_steps=1000)
    set_schedule_horizon(scheduler, 200)
    assert scheduler.lr_lambdas[0].warmup_steps == 20 and scheduler.lr_lambdas[0].total_steps == 200
    set_schedule_horizon(scheduler, 400)  # a later projection may move the end back out
    assert scheduler.lr_lambdas[0].warmup_steps == 40
    for _ in range(50):  # projections that wobble by a step must not ratchet the warmup up by rounding
        set_schedule_horizon(scheduler, 394)
        set_schedule_horizon(scheduler, 395)
    assert scheduler.lr_lambdas[0].warmup_steps == 40


def test_bad_budget_values():
    with pytest.raises(ValueError, match="minutes"):
        TimeBudget(0.0, 0)
    with pytest.raises(ConfigError, match="max_minutes"):
        TrainConfig(max_minutes=-1.0)


def test_trainer_shortens_the_run_and_its_cosine(tmp_path, monkeypatch):
    clock = FakeClock(tick=0.01)  # every clock reading advances 10 ms

    def budget(minutes, start_step):
        return TimeBudget(minutes, start_step, warmup_fraction=0.0, clock=clock)

    monkeypatch.setattr(trainer_module, "TimeBudget", budget)
    trainer = make(tmp_path, repetitive_data(n=256), max_steps=10_000, warmup_steps=5, max_minutes=0.05,
                   min_lr_ratio=0.1)
    trainer.train()
    assert 33 <= trainer.step < 10_000
    assert trainer.cfg.max_steps == trainer.step
    # the cosine reached its floor at the shortened end
    schedule = trainer.scheduler.lr_lambdas[0]
    assert schedule.total_steps == trainer.step
    assert warmup_cosine_factor(trainer.step, schedule.warmup_steps, schedule.total_steps, 0.1) == \
        pytest.approx(0.1)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["time_budget"]["planned_max_steps"] == 10_000
    assert metrics["time_budget"]["max_steps"] == trainer.step
    # the shortened horizon is part of the scheduler state a checkpoint saves
    assert trainer.scheduler.state_dict()["lr_lambdas"][0]["total_steps"] == trainer.step
    trainer.close()


def test_no_budget_runs_every_step(tmp_path):
    trainer = make(tmp_path, repetitive_data(), max_steps=12)
    trainer.train()
    assert trainer.step == 12
    assert json.loads((tmp_path / "metrics.json").read_text())["time_budget"] is None
    trainer.close()
