"""Straggler balancing: slow workers get proportionally fewer local steps, bounded below."""

from __future__ import annotations

import pytest

from fedkit.net.straggler import StragglerPolicy


def test_disabled_gives_full_work() -> None:
    p = StragglerPolicy(enabled=False)
    for c, t in enumerate([1.0, 1.0, 10.0]):
        p.observe(c, t, 1.0)
    assert [p.fraction(c) for c in range(3)] == [1.0, 1.0, 1.0]


def test_slow_worker_gets_proportionally_less() -> None:
    p = StragglerPolicy(enabled=True, min_fraction=0.1, smoothing=1.0)
    for c, t in enumerate([1.0, 1.0, 1.0, 4.0]):
        p.observe(c, t, 1.0)
    assert p.fraction(0) == 1.0
    assert p.fraction(3) == pytest.approx(0.25)
    assert p.fraction(99) == 1.0  # unknown client: full work


def test_estimates_full_work_time_from_partial_work_and_floor() -> None:
    p = StragglerPolicy(enabled=True, min_fraction=0.5, smoothing=1.0)
    p.observe(0, 1.0, 1.0)
    p.observe(1, 1.0, 1.0)
    p.observe(2, 2.5, 0.25)  # 10 s for the full work
    assert p.fraction(2) == 0.5  # would be 0.1, floored


def test_smoothing_averages_measurements() -> None:
    p = StragglerPolicy(enabled=True, smoothing=0.5)
    p.observe(0, 2.0, 1.0)
    p.observe(0, 4.0, 1.0)
    assert p.full_time[0] == pytest.approx(3.0)


@pytest.mark.parametrize("kw", [{"min_fraction": 0.0}, {"min_fraction": 1.5}, {"smoothing": 0.0}])
def test_validation(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        StragglerPolicy(**kw)  # type: ignore[arg-type]
