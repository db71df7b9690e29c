import math

import pytest

from bootleg.schedules import cosine, ema_at, lr_at, warmup_steps, wd_at


def test_lr_warmup_then_cosine():
    total, warm = 100, 10
    assert lr_at(0, total, warm, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-4)
    assert lr_at(5, total, warm, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-4 + 0.5 * (3e-3 - 1e-4))
    assert lr_at(10, total, warm, 1e-4, 3e-3, 1e-5) == pytest.approx(3e-3)
    assert lr_at(55, total, warm, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-5 + 0.5 * (3e-3 - 1e-5))
    assert lr_at(100, total, warm, 1e-4, 3e-3, 1e-5) == pytest.approx(1e-5)
    values = [lr_at(s, total, warm, 1e-4, 3e-3, 1e-5) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_schedules_are_pure_functions_of_step():
    a = [lr_at(s, 50, 5, 0.0, 1.0, 0.0) for s in range(50)]
    b = [lr_at(s, 50, 5, 0.0, 1.0, 0.0) for s in reversed(range(50))][::-1]
    assert a == b


def test_wd_cosine_and_ema_linear():
    assert wd_at(0, 10, 0.04, 0.4) == pytest.approx(0.04)
    assert wd_at(10, 10, 0.04, 0.4) == pytest.approx(0.4)
    assert wd_at(5, 10, 0.04, 0.4) == pytest.approx(0.22)
    assert ema_at(0, 10, 0.996, 1.0) == pytest.approx(0.996)
    assert ema_at(5, 10, 0.996, 1.0) == pytest.approx(0.998)
    assert ema_at(20, 10, 0.996, 1.0) == pytest.approx(1.0)
    assert ema_at(7, 10, 0.9985, 0.9985) == pytest.approx(0.9985)


def test_warmup_scales_with_run_length():
    # Appendix B: 105 warmup epochs of 600; a 60-epoch run warms up for 10.5 epochs
    assert warmup_steps(600, 105, 600) == 105
    assert warmup_steps(60, 105, 600) == round(10.5)
    assert cosine(0, 0, 1.0, 2.0) == 1.0
    assert not math.isnan(cosine(3, 0, 1.0, 2.0))
