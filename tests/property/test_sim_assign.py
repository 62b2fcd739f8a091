"""Work assignment of the distributed executor: a balanced partition of the cohort, the same on
every rank whatever the input order (so ranks agree without talking)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.sim.distributed import greedy_assign, owner_table

works = st.dictionaries(st.integers(0, 10_000), st.floats(0.0, 1e4), min_size=0, max_size=60)


@settings(max_examples=150, deadline=None)
@given(work=works, ranks=st.integers(1, 6), data=st.data())
def test_greedy_assign_partitions_balances_and_ignores_order(
    work: dict[int, float], ranks: int, data: st.DataObject
) -> None:
    items = list(work.items())
    bins = greedy_assign(items, ranks)
    assert len(bins) == ranks
    flat = [c for b in bins for c in b]
    assert sorted(flat) == sorted(work)  # every client exactly once
    assert all(b == sorted(b) for b in bins)  # ascending order inside a rank
    if items:
        loads = [sum(work[c] for c in b) for b in bins]
        assert max(loads) - min(loads) <= max(work.values()) + 1e-6  # LPT bound
    shuffled = data.draw(st.permutations(items))
    assert greedy_assign(shuffled, ranks) == bins


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(0, 1000), min_size=1, max_size=200), ranks=st.integers(1, 5))
def test_owner_table_covers_population(sizes: list[int], ranks: int) -> None:
    owner = owner_table(sizes, ranks)
    assert owner.shape == (len(sizes),)
    assert int(owner.min()) >= 0 and int(owner.max()) < ranks
