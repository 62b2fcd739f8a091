"""The registry: lazy name → class lines, import paths for user code, and the "its own file plus
ONE registry line" property for an algorithm, an aggregator wrapper, a sampler and an executor
(the plugins in tests/plugins/), each run end to end through the experiment runner."""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import fedkit.experiment.config as config_mod
import fedkit.sim.factory as factory_mod
from fedkit import registry
from fedkit.aggregate import AggContext, WeightedMean
from fedkit.experiment.config import ConfigError, ExperimentConfig, study_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import RunOutcome, run_experiment
from fedkit.local import LocalTraining
from fedkit.privacy import ClipNorm
from fedkit.registry import AGGREGATORS, ALGORITHMS, EXECUTORS, SAMPLERS, Registry
from fedkit.robust import TrimmedMean
from fedkit.server_opt import SGD
from tests.integration.test_runner import TINY
from tests.plugins.first_k import FirstK
from tests.plugins.half_step import HalfStep
from tests.plugins.scale import ScaleUpdates


@pytest.fixture
def plugins() -> Iterator[None]:
    """The four plugins, each registered by ONE line (removed again after the test)."""
    ALGORITHMS.register("test_halfstep", "tests.plugins.half_step:HalfStep")
    AGGREGATORS.register("test_scale", "tests.plugins.scale:ScaleUpdates")
    SAMPLERS.register("test_firstk", "tests.plugins.first_k:FirstK")
    EXECUTORS.register("test_counting", "tests.plugins.counting_executor:counting")
    yield
    for reg, name in [
        (ALGORITHMS, "test_halfstep"),
        (AGGREGATORS, "test_scale"),
        (SAMPLERS, "test_firstk"),
        (EXECUTORS, "test_counting"),
    ]:
        reg.unregister(name)


def cfg_of(**sections: dict[str, Any]) -> ExperimentConfig:
    doc = tomllib.loads(TINY)
    for name, keys in sections.items():
        doc.setdefault(name, {}).update(keys)
    (cfg,) = study_from_mapping(doc, default_name="r").runs
    return cfg


def run(cfg: ExperimentConfig, tmp_path: Path) -> RunOutcome:
    with ResultsStore(results_path(tmp_path / cfg.name)) as store:
        outcome = run_experiment(cfg, store)
    assert outcome.status == "completed", outcome.error
    assert outcome.summary is not None
    return outcome


def sha(cfg: ExperimentConfig, tmp_path: Path) -> str:
    summary = run(cfg, tmp_path).summary
    assert summary is not None
    return summary.model_sha256


# -- the registry itself ------------------------------------------------------------------------


def test_a_registry_line_imports_nothing_until_used() -> None:
    reg = Registry("widget")
    reg.register("ghost", "no_such_package.widgets:Ghost", size=3)
    assert "no_such_package" not in sys.modules
    assert reg.names() == ("ghost",) and "ghost" in reg and list(reg) == ["ghost"]
    assert reg.entry("ghost").preset == {"size": 3}
    with pytest.raises(registry.UnknownNameError, match=r"cannot import module 'no_such_package\."):
        reg.load("ghost")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("ghost", "x.y:Z")
    with pytest.raises(ValueError, match="without ':'"):
        reg.register("a:b", "x.y:Z")
    with pytest.raises(ValueError, match="not an import path"):
        reg.register("plain", "x.y.Z")
    with pytest.raises(registry.UnknownNameError, match="unknown widget 'nope'; allowed: ghost"):
        reg.entry("nope")
    assert "pkg.mod:Cls" in reg and "pkg.mod" not in reg  # an import path is always a candidate
    reg.unregister("ghost")
    assert reg.names() == ()


def test_import_paths_load_and_objects_name_themselves() -> None:
    assert registry.load_path("fedkit.server_opt:SGD") is SGD
    with pytest.raises(registry.UnknownNameError, match="has no attribute 'Nope'"):
        registry.load_path("fedkit.server_opt:Nope")
    assert registry.SERVER_OPTIMIZERS.name_of(SGD()) == "sgd"  # the plain entry, not a preset
    assert ALGORITHMS.name_of(HalfStep()) == "tests.plugins.half_step:HalfStep"


def test_each_list_of_names_exists_once() -> None:
    assert config_mod.ALGORITHMS is ALGORITHMS and config_mod.EXECUTORS is EXECUTORS
    assert not hasattr(factory_mod, "EXECUTORS") or factory_mod.EXECUTORS is EXECUTORS
    assert not hasattr(config_mod, "WEIGHTINGS")
    assert ALGORITHMS.names() == (
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedsgd",
        "fedprox",
        "scaffold",
        "centralized",
        "fedper",
        "fedbn",
        "ditto",
        "finetune",
        "perfedavg",
        "qfedavg",
        "fedaws",
        "fedseq",
    )
    assert EXECUTORS.names() == ("serial", "processes", "vectorized", "torchrun")
    for reg in registry.REGISTRIES:  # every built-in line points at something that exists
        for name in reg:
            assert callable(reg.load(name)), (reg.kind, name)


# -- one file plus one registry line ------------------------------------------------------------


@pytest.mark.usefixtures("plugins")
def test_plugin_algorithm_is_built_through_its_own_fields_and_runs(tmp_path: Path) -> None:
    cfg = cfg_of(algorithm={"name": "test_halfstep", "step": 0.5})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm == HalfStep(local=LocalTraining(lr=0.05), step=0.5)
    assert cfg.to_mapping()["algorithm"]["step"] == 0.5
    with pytest.raises(ConfigError, match=r"algorithm\.step must be in \(0, 1\], got 1\.5"):
        cfg_of(algorithm={"name": "test_halfstep", "step": 1.5})
    # half of the SGD(lr 1) step along the mean delta is the SGD(lr 0.5) step: same model, bit
    # for bit (scaling by 0.5 is exact in floats)
    half = sha(cfg, tmp_path)
    fedavg = cfg_of(algorithm={"name": "fedavg", "server": {"lr": 0.5}})
    assert half == sha(fedavg, tmp_path)
    assert half != sha(cfg_of(), tmp_path)
    # the same class named by its import path, no registry line
    by_path = cfg_of(algorithm={"name": "tests.plugins.half_step:HalfStep", "step": 0.5})
    assert by_path.algorithm is not None and by_path.algorithm.algorithm == cfg.algorithm.algorithm


@pytest.mark.usefixtures("plugins")
def test_aggregator_wrapper_takes_its_inner_aggregator_as_a_nested_table(tmp_path: Path) -> None:
    cfg = cfg_of(aggregator={"name": "test_scale", "factor": 2, "inner": {"name": "mean"}})
    assert cfg.algorithm is not None
    assert cfg.algorithm.algorithm.aggregator == ScaleUpdates(factor=2.0, inner=WeightedMean())
    m = cfg.to_mapping()
    assert m["aggregator"] == {"name": "test_scale", "factor": 2.0, "inner": {"name": "mean"}}
    again = study_from_mapping(m, default_name="r").runs[0]
    assert again.algorithm == cfg.algorithm
    bad = [
        ({"inner": {"name": "nope"}}, "aggregator.inner.name: unknown aggregator 'nope'"),
        ({"inner": {"name": "mean", "k": 1}}, "unknown key aggregator.inner.k"),
        ({"factor": -1.0}, "aggregator.factor must be a finite number > 0, got -1.0"),
        ({"factor": "big"}, "aggregator.factor must be a finite number; got 'big'"),
    ]
    for over, needle in bad:
        with pytest.raises(ConfigError) as e:
            cfg_of(aggregator={"name": "test_scale", "factor": 1.0, **over})
        assert needle in str(e.value)
    # scaling: (3, 4) by 0.5 -> (1.5, 2)
    scale = ScaleUpdates(factor=0.5)
    out = scale.prepare({"w": torch.tensor([3.0, 4.0])}, 1.0, AggContext(round=0, seed=0))
    assert torch.equal(out["w"], torch.tensor([1.5, 2.0]))
    # end to end: factor 1 changes nothing; factor 0.5 changes the model
    same = cfg_of(aggregator={"name": "test_scale", "factor": 1.0})
    half = cfg_of(aggregator={"name": "test_scale", "factor": 0.5})
    plain = sha(cfg_of(aggregator={"name": "mean"}), tmp_path)
    assert sha(same, tmp_path) == plain != sha(half, tmp_path)
    # a built-in chain from the registry: clip around the trimmed mean
    chain = cfg_of(
        aggregator={"name": "clip", "max_norm": 0.5, "inner": {"name": "trimmed_mean", "beta": 0.2}}
    )
    assert chain.algorithm is not None
    assert chain.algorithm.algorithm.aggregator == ClipNorm(
        max_norm=0.5, inner=TrimmedMean(beta=0.2)
    )


@pytest.mark.usefixtures("plugins")
def test_plugin_sampler_chooses_the_cohort(tmp_path: Path) -> None:
    cfg = cfg_of(sampler={"name": "test_firstk", "offset": 8})
    assert cfg.sampler == FirstK(offset=8) and cfg.to_mapping()["sampler"] == {
        "name": "test_firstk",
        "offset": 8,
    }
    with pytest.raises(ConfigError, match=r"sampler\.offset must be >= 0, got -1"):
        cfg_of(sampler={"name": "test_firstk", "offset": -1})
    outcome = run(cfg, tmp_path)
    with ResultsStore(results_path(tmp_path / cfg.name), create=False) as store:
        trained = [c for c in store.clients(outcome.run_id) if c.trained]
    # 4 clients per round of 10, from client 8 on, wrapping around
    assert {c.round: [] for c in trained}.keys() == {0, 1, 2}
    for r in (0, 1, 2):
        assert sorted(c.client_id for c in trained if c.round == r) == [0, 1, 8, 9]


@pytest.mark.usefixtures("plugins")
def test_plugin_executor_is_one_line(tmp_path: Path) -> None:
    from tests.plugins.counting_executor import BUILT

    BUILT.clear()
    cfg = cfg_of(run={"executor": "test_counting"})
    assert sha(cfg, tmp_path) == sha(cfg_of(), tmp_path)
    assert len(BUILT) == 1 and BUILT[0].store.num_clients == 10
    with pytest.raises(ConfigError, match=r"run\.executor: module .* has no attribute 'nope'"):
        cfg_of(run={"executor": "tests.plugins.counting_executor:nope"})
