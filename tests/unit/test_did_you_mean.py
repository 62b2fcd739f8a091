"""Unknown keys in an experiment file get a "did you mean" from the allowed ones (difflib)."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedkit.experiment.config import ConfigError, study_from_mapping
from fedkit.experiment.tables import did_you_mean

BASE = """
[data]
dataset = "synthetic"
partition = "natural"

[model]
name = "logreg"

[algorithm]
name = "fedavg"

[run]
rounds = 3
"""


def test_closest_choice_or_nothing() -> None:
    # difflib ratio 2*M/T: "roundz" vs "rounds" shares 5 of 12 characters -> 10/12 = 0.83 >= 0.6
    assert did_you_mean("roundz", ["seed", "rounds", "clients_per_round"]) == (
        " (did you mean 'rounds'?)"
    )
    # "xyz" vs "rounds": no common character -> ratio 0 -> no suggestion
    assert did_you_mean("xyz", ["rounds", "seed"]) == ""
    assert did_you_mean("rounds", []) == ""


@given(st.sampled_from(["rounds", "clients_per_round", "eval_every", "seed"]))
def test_a_one_letter_typo_suggests_the_key(key: str) -> None:
    typo = key[:-1] + ("x" if key[-1] != "x" else "y")
    assert did_you_mean(typo, ["rounds", "clients_per_round", "eval_every", "seed"]) == (
        f" (did you mean {key!r}?)"
    )


@pytest.mark.parametrize(
    ("table", "key", "text"),
    [
        ("run", "roundz", "unknown key run.roundz in [run] (did you mean 'rounds'?); allowed:"),
        ("algorithm", "nmae", "(did you mean 'name'?)"),
    ],
)
def test_unknown_table_key_suggests(table: str, key: str, text: str) -> None:
    doc = tomllib.loads(BASE)
    doc[table][key] = 1
    with pytest.raises(ConfigError) as info:
        study_from_mapping(doc, default_name="t")
    assert text in str(info.value)


def test_unknown_section_suggests() -> None:
    doc = tomllib.loads(BASE)
    doc["algoritm"] = {}
    with pytest.raises(ConfigError, match=r"'algoritm' \(did you mean 'algorithm'\?\)"):
        study_from_mapping(doc, default_name="t")
    with pytest.raises(ConfigError, match=r"'runn' in key 'runn.rounds' \(did you mean 'run'\?\)"):
        study_from_mapping(tomllib.loads(BASE), default_name="t", overrides={"runn.rounds": 3})


@pytest.mark.parametrize(
    ("key", "text"),
    [
        # "aplha" vs "alpha": 4 of 5 letters match in order -> ratio 2*4/10 = 0.8 >= 0.6
        ("aplha", "unknown key data.aplha in [data] (did you mean 'alpha'?); allowed: dataset,"),
        ("num_client", "(did you mean 'num_clients'?)"),
    ],
)
def test_unknown_data_key_suggests(key: str, text: str) -> None:
    doc = tomllib.loads(BASE)
    doc["data"][key] = 1
    with pytest.raises(ConfigError) as info:
        study_from_mapping(doc, default_name="t")
    assert text in str(info.value)


PARALLEL = """
[data]
dataset = "synthetic"
partition = "iid"
num_clients = 1

[model]
name = "logreg"

[parallel]
method = "sync"
workers = 2

[parallel.network]
latency_ms = 0.5

[[arms]]
name = "a"

[[arms]]
name = "b"
"""


@pytest.mark.parametrize(
    ("arm_key", "text"),
    [
        ("parallel.local_step", "unknown key parallel.local_step in [parallel] (did you mean "
         "'local_steps'?)"),
        ("parallel.network.latency", "unknown key parallel.network.latency in "
         "[parallel.network] (did you mean 'latency_ms'?)"),
    ],
)  # fmt: skip
def test_unknown_key_in_a_parallel_arm_suggests(arm_key: str, text: str) -> None:
    """A typo in one [[arms]] table of a [parallel] study is named with its closest key."""
    study_from_mapping(tomllib.loads(PARALLEL), default_name="t")  # valid as written
    doc = tomllib.loads(PARALLEL + f"{arm_key} = 4\n")  # in the last arm, "b"
    with pytest.raises(ConfigError) as info:
        study_from_mapping(doc, default_name="t")
    assert text in str(info.value)


def test_unknown_section_of_a_study_outside_run_suggests() -> None:
    """Files read by experiment/arms.py (decentralised, vertical) name the closest section."""
    from fedkit.experiment.arms import expand_arms

    with pytest.raises(ConfigError, match=r"unknown section \[dta\] \(did you mean 'data'\?\)"):
        expand_arms({"dta": {}}, ("data", "model"), default_name="t")
