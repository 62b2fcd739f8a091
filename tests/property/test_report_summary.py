"""Property tests of the per-arm report summary (``report_model.summarize``).

Invariants: the best accuracy is the maximum over evaluated rounds and at least the final one;
rounds to target is the first evaluated round at or above the target (so no earlier round reached
it); the client summary lies within the clients' range; totals are the last point's.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from fedkit.experiment.report_model import Arm, RoundPoint, summarize

accuracy = st.one_of(st.none(), st.floats(0.0, 1.0))


@st.composite
def arms(draw: st.DrawFn) -> Arm:
    accs = draw(st.lists(accuracy, min_size=0, max_size=30))
    target = draw(st.one_of(st.none(), st.floats(0.0, 1.0)))
    wall, up, down = 0.0, 0, 0
    points = []
    for i, acc in enumerate(accs):
        wall += draw(st.floats(0.0, 10.0))
        up += draw(st.integers(0, 10**6))
        down += draw(st.integers(0, 10**6))
        points.append(
            RoundPoint(
                round=i + 1,
                accuracy=acc,
                loss=None,
                wall_seconds=wall,
                bytes_up=up,
                bytes_down=down,
            )
        )
    clients = draw(st.lists(st.floats(0.0, 1.0), max_size=50))
    return Arm(
        run_id="1",
        name="arm",
        algorithm="fedavg",
        target_accuracy=target,
        points=tuple(points),
        client_accuracy=tuple(clients),
    )


@given(arms())
def test_summary_invariants(arm: Arm) -> None:
    s = summarize(arm)
    scored = [p for p in arm.points if p.accuracy is not None]
    if not scored:
        assert s.final_accuracy is None and s.best_accuracy is None
        assert s.rounds_to_target is None
    else:
        assert s.final_accuracy == scored[-1].accuracy
        assert s.best_accuracy == max(p.accuracy for p in scored if p.accuracy is not None)
        assert s.best_accuracy is not None and s.best_accuracy >= s.final_accuracy
        best = next(p for p in scored if p.round == s.best_round)
        assert best.accuracy == s.best_accuracy
    if s.rounds_to_target is not None:
        assert arm.target_accuracy is not None
        hit = next(p for p in scored if p.round == s.rounds_to_target)
        assert hit.accuracy is not None and hit.accuracy >= arm.target_accuracy
        assert (s.seconds_to_target, s.bytes_to_target) == (hit.wall_seconds, hit.bytes_total)
        earlier = [p for p in scored if p.round < s.rounds_to_target]
        assert all(p.accuracy is not None and p.accuracy < arm.target_accuracy for p in earlier)
    else:
        assert s.seconds_to_target is None and s.bytes_to_target is None
    if s.rounds_to_target is None and arm.target_accuracy is not None:
        assert all(p.accuracy is not None and p.accuracy < arm.target_accuracy for p in scored)
    if arm.points:
        last = arm.points[-1]
        assert (s.rounds, s.wall_seconds) == (last.round, last.wall_seconds)
        assert (s.bytes_up, s.bytes_down) == (last.bytes_up, last.bytes_down)
    if arm.client_accuracy:
        lo, hi = min(arm.client_accuracy), max(arm.client_accuracy)
        assert s.client_mean is not None and s.client_p10 is not None
        # p10 lies between the order statistics around position 0.1 * (n - 1).
        ordered = sorted(arm.client_accuracy)
        pos = 0.1 * (len(ordered) - 1)
        below, above = ordered[math.floor(pos)], ordered[math.ceil(pos)]
        assert below - 1e-12 <= s.client_p10 <= above + 1e-12
        assert lo - 1e-12 <= s.client_mean <= hi + 1e-12
        assert lo - 1e-12 <= s.client_p10 <= hi + 1e-12
        assert s.client_count == len(arm.client_accuracy)
