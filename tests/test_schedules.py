"""LR schedule tests: hand-checked values at chosen steps, bounds, warm-up, cycle ends, optimiser."""

import math

import pytest
import torch

from salt_model.config import ScheduleConfig, TrainConfig
from salt_model.training.schedules import cycle_end_epochs, lr_at, make_optimizer, set_lr

SPE = 10  # steps per epoch


def sched(**kw):
    cfg = ScheduleConfig(**{"lr": 1e-2, "min_lr": 1e-4, "max_lr": 1e-1, "cycle_epochs": 4.0, **kw})
    cfg.validate()
    return cfg


def at(epoch, cfg, epochs=12):
    return lr_at(round(epoch * SPE), SPE, epochs, cfg)


def test_constant_and_step():
    assert at(0, sched(name="constant")) == at(11.9, sched(name="constant")) == 1e-2
    cfg = sched(name="step", step_epochs=3.0, gamma=0.5)
    assert [at(e, cfg) for e in (0, 2.9, 3, 5.9, 6, 11.9)] == pytest.approx(
        [1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3, 1.25e-3]
    )


def test_cosine_warm_restarts():
    cfg = sched(name="cosine")
    assert at(0, cfg) == pytest.approx(1e-2)
    assert at(2, cfg) == pytest.approx((1e-2 + 1e-4) / 2)  # mid-cycle
    assert at(3.9, cfg) == pytest.approx(1e-4 + (1e-2 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 3.9 / 4)))
    assert at(3.9, cfg) < 2e-4
    assert at(4, cfg) == pytest.approx(1e-2)  # restart
    assert at(6, cfg) == pytest.approx(at(2, cfg))
    assert cycle_end_epochs(12, cfg) == [4, 8, 12]
    assert cycle_end_epochs(10, cfg) == [4, 8]


def test_cyclic_triangular2():
    cfg = sched(name="cyclic")
    assert at(0, cfg) == pytest.approx(1e-4)
    assert at(2, cfg) == pytest.approx(1e-1)  # first peak at mid-cycle
    assert at(1, cfg) == pytest.approx(1e-4 + (1e-1 - 1e-4) / 2)
    assert at(4, cfg) == pytest.approx(1e-4)  # cycle end
    assert at(6, cfg) == pytest.approx(1e-4 + (1e-1 - 1e-4) / 2)  # amplitude halved
    assert at(10, cfg) == pytest.approx(1e-4 + (1e-1 - 1e-4) / 4)
    assert cycle_end_epochs(12, cfg) == [4, 8, 12]
    assert cycle_end_epochs(12, sched(name="cyclic", cycle_epochs=2.5)) == [2, 5, 7, 10]


def test_onecycle():
    cfg = sched(name="onecycle", pct_start=0.25)  # 12 epochs: rise over 3, cosine down over 9
    assert at(0, cfg) == pytest.approx(1e-4)
    assert at(1.5, cfg) == pytest.approx((1e-2 + 1e-4) / 2)
    assert at(3, cfg) == pytest.approx(1e-2)
    assert at(7.5, cfg) == pytest.approx((1e-2 + 1e-4) / 2)
    assert lr_at(12 * SPE, SPE, 12, cfg) == pytest.approx(1e-4)
    assert cycle_end_epochs(12, cfg) == []


def test_warmup_from_min_lr():
    cfg = sched(name="constant", warmup_epochs=2.0)
    assert at(0, cfg) == pytest.approx(1e-4)
    assert at(1, cfg) == pytest.approx((1e-4 + 1e-2) / 2)
    assert at(2, cfg) == pytest.approx(1e-2)
    cos = sched(name="cosine", warmup_epochs=1.0)
    assert at(0.5, cos) == pytest.approx(1e-4 + (at(0.5, sched(name="cosine")) - 1e-4) * 0.5)


@pytest.mark.parametrize("name", ["constant", "step", "cosine", "cyclic", "onecycle"])
@pytest.mark.parametrize("warmup", [0.0, 1.5])
def test_always_within_bounds(name, warmup):
    cfg = sched(name=name, warmup_epochs=warmup, step_epochs=3.0)
    lo = min(1e-4, 1e-2 * 0.5**4)  # step has no floor: its last value, or min_lr during warm-up
    hi = 1e-1 if name == "cyclic" else 1e-2
    values = [lr_at(s, 7, 12, cfg) for s in range(12 * 7 + 1)]
    if name == "step" and not warmup:
        lo = 1e-2 * 0.5**4
    assert all(lo - 1e-12 <= v <= hi + 1e-12 for v in values)


def test_bad_arguments():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at(0, 0, 10, sched())


def test_make_optimizer_and_set_lr():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = make_optimizer(model.parameters(), TrainConfig(optimizer="sgd", weight_decay=1e-4), sched())
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]  # no decay on biases / BN
    assert sum(len(g["params"]) for g in opt.param_groups) == 4
    opt = make_optimizer(model.parameters(), TrainConfig(optimizer="adam"), sched())
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 1e-2
    set_lr(opt, 3e-4)
    assert all(g["lr"] == 3e-4 for g in opt.param_groups)
