"""Validation of the system model (fedkit.sim.system): every bound on both sides, every error
naming its key and the value, the distributions' own bounds, and the experiment-file forms.

Each boundary pair below is one value that must be accepted and the nearest one that must be
refused, so that loosening or tightening a comparison (``<`` for ``<=``, ``>=`` for ``>``,
``or`` for ``and``) changes an outcome."""

from __future__ import annotations

import math
from typing import Any

import pytest

from fedkit.sim.system import (
    Constant,
    LogNormal,
    SystemModel,
    Trace,
    Uniform,
    distribution_from,
)

EPS = 1e-9


@pytest.mark.parametrize("key", ["availability", "dropout", "stragglers"])
def test_probabilities_accept_0_and_1_and_refuse_just_outside(key: str) -> None:
    for ok in (0.0, 1.0, 0.5):
        assert getattr(SystemModel(**{key: ok}), key) == ok
    for bad in (-EPS, 1.0 + 1e-12, math.nan):
        with pytest.raises(ValueError, match=rf"^{key} must be a probability in \[0, 1\], got"):
            SystemModel(**{key: bad})


def test_per_device_availability_is_a_distribution_not_a_probability() -> None:
    # a distribution may exceed 1 (counts as always reachable); only a number is a probability
    m = SystemModel(availability=Uniform(low=0.5, high=2.0))
    assert m.availability == Uniform(low=0.5, high=2.0)


def test_speed_jitter_is_bounded_on_both_sides() -> None:
    assert SystemModel(speed_jitter=0.0).speed_jitter == 0.0
    assert SystemModel(speed_jitter=20.0).speed_jitter == 20.0
    # above 20 a client's exp(sigma * z) could overflow in the timing (1e300 did)
    for bad in (-EPS, -1.0, 20.0 + 1e-9, 1e300, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^speed_jitter must be in \[0, 20\], got"):
            SystemModel(speed_jitter=bad)


def test_deadline_must_be_finite_and_positive_or_unset() -> None:
    assert SystemModel(deadline=None).deadline is None
    assert SystemModel(deadline=EPS).deadline == EPS
    assert SystemModel(deadline=1e300).deadline == 1e300
    for bad in (0.0, -EPS, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^deadline must be a number > 0 or unset, got"):
            SystemModel(deadline=bad)


@pytest.mark.parametrize(
    "work", [(0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (0.3, 0.3), (0.2, 0.7)], ids=str
)
def test_straggler_work_bounds_accepted(work: tuple[float, float]) -> None:
    assert SystemModel(straggler_work=work).straggler_work == work


@pytest.mark.parametrize(
    "work", [(-EPS, 0.5), (0.5, 1.0 + 1e-12), (0.6, 0.5), (-0.5, -0.1), (1.1, 1.2)], ids=str
)
def test_straggler_work_bounds_refused(work: tuple[float, float]) -> None:
    with pytest.raises(
        ValueError,
        match=r"^straggler_work must be \(low, high\) with 0 <= low <= high <= 1, got \(",
    ):
        SystemModel(straggler_work=work)


def test_policy_names_the_allowed_values() -> None:
    assert SystemModel(policy="partial").policy == "partial"
    with pytest.raises(ValueError, match=r"^policy must be one of \('drop', 'partial'\), got 'x'"):
        SystemModel(policy="x")  # type: ignore[arg-type]


def test_defaults() -> None:
    m = SystemModel()
    assert (m.availability, m.dropout, m.stragglers, m.speed_jitter) == (1.0, 0.0, 0.0, 0.0)
    assert (m.deadline, m.straggler_work, m.policy, m.seed) == (None, (0.0, 1.0), "drop", 0)
    assert m.compute_speed == Constant(value=1e4)
    assert m.bandwidth_down == Constant(value=1e7) and m.bandwidth_up == Constant(value=1e6)
    assert m.latency == Constant(value=0.05)


# ------------------------------------------------------------------------- distributions
def test_constant_and_trace_need_finite_positive_values() -> None:
    assert Constant(value=EPS).value == EPS
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^Constant.value must be a finite number > 0"):
            Constant(value=bad)
    assert Trace(values=(EPS, 2.0)).values == (EPS, 2.0)
    with pytest.raises(ValueError, match=r"^Trace.values must not be empty"):
        Trace(values=())
    with pytest.raises(ValueError, match=r"^Trace.values must be finite numbers > 0, got \[0.0"):
        Trace(values=(1.0, 0.0))
    with pytest.raises(ValueError, match=r"got \[inf\]"):
        Trace(values=(math.inf,))


def test_lognormal_and_uniform_bounds() -> None:
    assert LogNormal(median=EPS, sigma=0.0).sigma == 0.0
    for bad in (0.0, math.inf):
        with pytest.raises(ValueError, match=r"^LogNormal.median must be a finite number > 0"):
            LogNormal(median=bad)
    assert LogNormal(median=1.0, sigma=20.0).sigma == 20.0
    for bad in (-EPS, 20.0 + 1e-9, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^LogNormal.sigma must be in \[0, 20\]"):
            LogNormal(median=1.0, sigma=bad)
    assert Uniform(low=2.0, high=2.0).draw(0, 5, "s") == 2.0  # low == high: a point
    for low, high in ((0.0, 1.0), (2.0, 1.0), (1.0, math.inf)):
        with pytest.raises(ValueError, match=r"^Uniform needs 0 < low <= high < inf"):
            Uniform(low=low, high=high)


# ------------------------------------------------------------------- the experiment-file forms
def test_distribution_from_each_form() -> None:
    assert distribution_from("k", 3) == Constant(value=3.0)
    assert distribution_from("k", [1, 2]) == Trace(values=(1.0, 2.0))
    assert distribution_from("k", {"dist": "uniform", "low": 1, "high": 2}) == Uniform(
        low=1, high=2
    )
    assert distribution_from("k", {"dist": "trace", "values": [1, 3]}) == Trace(values=(1.0, 3.0))
    assert distribution_from("k", {"dist": "constant", "value": 2.0}) == Constant(value=2.0)
    assert distribution_from("k", {"dist": "lognormal", "median": 5.0}) == LogNormal(median=5.0)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (True, r"^system.x must be a number, a list or a table, got True"),
        ("fast", r"^system.x must be a number, a list or a table, got 'fast'"),
        (
            {"low": 1},
            r"^system.x.dist must be one of constant, lognormal, uniform, trace, got None",
        ),
        (
            {"dist": "uniform", "low": 1, "hi": 2},
            r"^system.x: unknown key\(s\) \['hi'\] for dist 'uniform'; allowed: \['low', 'high'\]",
        ),
        ({"dist": "uniform", "low": 1}, r"^system.x: .*missing 1 required keyword-only"),
    ],
    ids=["bool", "string", "no-dist", "unknown-key", "missing-key"],
)
def test_distribution_from_errors_name_the_key(value: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        distribution_from("system.x", value)


def test_from_mapping_errors_name_the_section_and_key() -> None:
    m = SystemModel.from_mapping({"availability": 0.5, "straggler_work": (0.1, 0.2), "seed": 3})
    assert (m.availability, m.straggler_work, m.seed) == (0.5, (0.1, 0.2), 3)
    per_device = SystemModel.from_mapping({"availability": [0.2, 0.9]}, section="sys")
    assert per_device.availability == Trace(values=(0.2, 0.9))
    with pytest.raises(ValueError, match=r"^sys: unknown key\(s\) \['x'\]; allowed: \["):
        SystemModel.from_mapping({"x": 1}, section="sys")
    for bad in ([0.1], [0.1, 0.2, 0.3], 0.5):
        with pytest.raises(ValueError, match=r"^sys.straggler_work must be \[low, high\], got"):
            SystemModel.from_mapping({"straggler_work": bad}, section="sys")
    with pytest.raises(ValueError, match=r"^sys: deadline must be a number > 0 or unset, got 0"):
        SystemModel.from_mapping({"deadline": 0}, section="sys")
    with pytest.raises(ValueError, match=r"^sys.latency.dist must be one of"):
        SystemModel.from_mapping({"latency": {"dist": "pareto"}}, section="sys")


def test_error_values_are_shortened_and_forms_are_converted() -> None:
    # a long list of bad trace values is cut to its first three in the message
    with pytest.raises(ValueError, match=r"got \[-1.0, -2.0, -3.0\]$"):
        Trace(values=(-1.0, -2.0, -3.0, -4.0))
    # a trace table without values is a missing key (named), not a KeyError
    with pytest.raises(ValueError, match=r"^system.x: .*missing 1 required keyword-only.*values"):
        distribution_from("system.x", {"dist": "trace"})
    # every link and speed key is read as a distribution
    m = SystemModel.from_mapping(
        {"compute_speed": 5.0, "bandwidth_down": 5e6, "bandwidth_up": 6e5, "latency": 0.2}
    )
    assert m.compute_speed == Constant(value=5.0)
    assert m.bandwidth_down == Constant(value=5e6) and m.bandwidth_up == Constant(value=6e5)
    assert m.latency == Constant(value=0.2)
