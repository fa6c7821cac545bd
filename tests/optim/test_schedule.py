"""HugeCTR's learning-rate schedule: warmup, hold, polynomial decay, floor (§3 of the reference)."""

from __future__ import annotations

import pytest

from terarec.errors import ConfigError
from terarec.optim.schedule import LearningRateScheduler


def hugectr_formula(step, base, warmup, start, steps, power, end):
    if warmup and step <= warmup:
        return step * base / warmup
    if start == 0 or step <= start:
        return base
    if step <= start + steps:
        return max(base * ((start + steps - step) / steps) ** power, end)
    return end


@pytest.mark.parametrize("args", [(0.1, 1, 0, 1, 2.0, 0.0), (24.0, 8000, 48000, 24000, 2.0, 0.0),
                                  (1.0, 5, 10, 20, 1.5, 0.05)])
def test_schedule_matches_formula(args):
    sched = LearningRateScheduler(*args)
    for step in range(1, 80):
        assert sched.get_next() == pytest.approx(hugectr_formula(step, *args), rel=1e-12)


def test_schedule_shape():
    s = LearningRateScheduler(1.0, warmup_steps=4, decay_start=6, decay_steps=4, decay_power=2.0,
                              end_lr=0.1)
    lrs = [s.get_next() for _ in range(12)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4:6] == [1.0, 1.0]
    assert lrs[6] == pytest.approx(0.5625) and lrs[9] == 0.1 and lrs[11] == 0.1


def test_schedule_state_and_errors():
    s = LearningRateScheduler(0.5, warmup_steps=10)
    for _ in range(3):
        s.get_next()
    t = LearningRateScheduler(0.5, warmup_steps=10)
    t.load_state_dict(s.state_dict())
    assert t.get_next() == s.get_next()
    with pytest.raises(ConfigError, match="decay_power"):
        LearningRateScheduler(0.1, decay_power=0.5)
    with pytest.raises(ConfigError, match="warmup_steps"):
        LearningRateScheduler(0.1, warmup_steps=-1)
    with pytest.raises(ConfigError, match="decay_steps"):
        LearningRateScheduler(0.1, decay_steps=-1)


@pytest.mark.parametrize("args", [(0.5, 0, 0, 0, 2.0, 0.0), (1.0, 0, 3, 4, 2.0, 0.1),
                                  (1.0, 2, 4, 0, 2.0, 0.05)])
def test_zero_warmup_and_decay_steps(args):
    """MLPerf DLRM train.py passes warmup_steps=0 / decay_steps=0: no warmup / no decay range."""
    sched = LearningRateScheduler(*args)
    lrs = [sched.get_next() for _ in range(12)]
    assert lrs == pytest.approx([hugectr_formula(s, *args) for s in range(1, 13)], rel=1e-12)
    if args[1] == 0:
        assert lrs[0] == args[0]  # no warmup: the base rate from step 1
    assert sched.get_lr() == lrs[-1]
