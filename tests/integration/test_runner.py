"""The experiment runner: parity with a direct core run, recording, and failure handling."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import torch

from fedkit.algorithms import FedAvg, FedProx
from fedkit.centralized import train_centralized
from fedkit.data.spec import DataSpec, build_federated
from fedkit.data.store import ClientStore
from fedkit.experiment.config import AlgorithmSettings, ConfigError, study_from_mapping
from fedkit.experiment.results import ResultsStore, results_path
from fedkit.experiment.runner import build_algorithm, model_init_seed, run_experiment, run_study
from fedkit.local import LocalTraining
from fedkit.models import build_model
from fedkit.params import model_params, sha256
from fedkit.run import RunConfig, run
from fedkit.server_opt import SGD, Adam
from fedkit.sim.serial import SerialExecutor

TINY = """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0
[data.options]
num_users = 10

[model]
name = "logreg"

[algorithm]
name = "fedavg"

[algorithm.local]
epochs = 1
batch_size = 10
lr = 0.05

[run]
rounds = 3
clients_per_round = 4
seed = 7
target_accuracy = 0.5
"""


def tiny(**sections: dict[str, object]) -> dict[str, object]:
    doc = tomllib.loads(TINY)
    for name, keys in sections.items():
        doc.setdefault(name, {}).update(keys)
    return doc


def direct_fedavg_sha(seed: int, rounds: int, cohort: int) -> str:
    """The same experiment built by hand from core objects."""
    spec = DataSpec(
        dataset="synthetic", partition="natural", alpha=1.0, beta=1.0, options={"num_users": 10}
    )
    fd = build_federated(spec)
    store = ClientStore.from_federated(fd)
    shape = tuple(fd.dataset.input_shape)
    torch.manual_seed(model_init_seed(seed))
    model = build_model("logreg", num_classes=fd.dataset.num_classes, input_shape=shape)
    algo = FedAvg(local=LocalTraining(lr=0.05, epochs=1, batch_size=10))
    executor = SerialExecutor(store, build_model("logreg", num_classes=10, input_shape=shape))
    result = run(
        algo,
        executor,
        model_params(model),
        RunConfig(rounds=rounds, clients_per_round=cohort, seed=seed),
    )
    return sha256(result.params)


def test_runner_matches_direct_core_run_and_records_everything(tmp_path: Path) -> None:
    (cfg,) = study_from_mapping(tiny(), default_name="tiny").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
        assert outcome.status == "completed" and outcome.summary is not None
        s = outcome.summary
        assert s.model_sha256 == direct_fedavg_sha(seed=7, rounds=3, cohort=4)
        run_row = store.run(outcome.run_id)
        rounds = store.rounds(outcome.run_id)
        clients = store.clients(outcome.run_id)
    assert run_row.status == "completed" and run_row.summary == s and run_row.study == "tiny"
    assert run_row.config["algorithm"]["name"] == "fedavg" and run_row.environment["threads"] == 1
    assert len(rounds) == 3 == s.rounds
    accs = [r.test_accuracy for r in rounds]
    assert all(a is not None for a in accs)
    assert s.final_accuracy == accs[-1] and s.best_accuracy == max(a for a in accs if a is not None)
    # accuracies 0.350, 0.350, 0.645 (chance is 0.1): the target 0.5 is first reached at round 3
    assert s.rounds_to_target == 3 and s.target_accuracy == 0.5
    assert s.bytes_up == sum(r.bytes_up for r in rounds) > 0
    assert s.bytes_down == sum(r.bytes_down for r in rounds) > 0
    assert all(r.cohort_size == 4 and r.committed for r in rounds)
    # federated evaluation defaults to the last round: every client scored there
    assert rounds[-1].fed_clients == 10 and rounds[-1].fed_mean is not None
    assert rounds[0].fed_mean is None
    trained = [c for c in clients if c.trained]
    assert len(trained) == 3 * 4 and all(c.steps and c.steps > 0 for c in trained)
    last = [c for c in clients if c.round == 2 and c.eval_accuracy is not None]
    assert len(last) == 10


def test_centralized_matches_train_centralized(tmp_path: Path) -> None:
    doc = tiny(algorithm={"name": "centralized"}, run={"rounds": 2, "federated_eval_every": 1})
    (cfg,) = study_from_mapping(doc, default_name="c").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
        rounds = store.rounds(outcome.run_id)
        clients = store.clients(outcome.run_id, round=1)
    assert outcome.summary is not None and outcome.summary.bytes_up == 0
    assert all(r.fed_clients == 10 for r in rounds)
    assert sum(c.eval_accuracy is not None for c in clients) == 10
    assert [c.client_id for c in clients if c.trained] == [-1]
    fd = build_federated(cfg.data)
    torch.manual_seed(model_init_seed(7))
    model = build_model("logreg", num_classes=10, input_shape=(60,))
    store_ = ClientStore.from_federated(fd)
    direct = train_centralized(
        model, store_, LocalTraining(lr=0.05, batch_size=10), epochs=2, seed=7
    )
    assert outcome.summary.model_sha256 == sha256(direct.params)


def test_crash_mid_run_marks_failed_and_study_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tiny()
    doc["arms"] = [
        {"name": "crashes", "algorithm": {"name": "fedprox", "mu": 0.1}},
        {"name": "fine"},
    ]
    study = study_from_mapping(doc, default_name="s")
    original = FedProx.server_update

    def explode(self, state, aggregate, info):  # type: ignore[no-untyped-def]
        if info.round == 1:
            raise RuntimeError("boom in round 1")
        return original(self, state, aggregate, info)

    monkeypatch.setattr(FedProx, "server_update", explode)
    with ResultsStore(results_path(tmp_path)) as store:
        outcomes = run_study(study, store)
        assert [o.status for o in outcomes] == ["failed", "completed"]
        failed, fine = store.runs()
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.startswith("RuntimeError: boom in round 1")
        assert failed.summary is None and failed.ended is not None
        assert [r.round for r in store.rounds(failed.id)] == [0]  # round 0 was recorded
        assert fine.status == "completed" and len(store.rounds(fine.id)) == 3


def test_interrupt_marks_interrupted_and_propagates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cfg,) = study_from_mapping(tiny(), default_name="s").runs

    def interrupt(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(SerialExecutor, "execute", interrupt)
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, store)
        (row,) = store.runs()
        assert row.status == "interrupted" and row.error is not None
        assert row.error.startswith("KeyboardInterrupt; no round was checkpointed yet")


@pytest.mark.parametrize(("stop_before", "every"), [(1, 1), (4, 1), (5, 4)])
def test_interrupted_run_resumes_in_its_row_to_the_uninterrupted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_before: int, every: int
) -> None:
    """Ctrl-C before round ``stop_before`` (after that many committed rounds, checkpointed
    every ``every``), then the same run again: it continues in the same row from the checkpoint
    and ends with the summary of an uninterrupted run (wall time aside), and the checkpoint is
    removed. With ``checkpoint_every = 4`` and 5 rounds done the checkpoint holds 4: the
    recorded round 4 is dropped and run again."""
    doc = tiny(run={"rounds": 6, "eval_every": 2, "checkpoint_every": every})
    (cfg,) = study_from_mapping(doc, default_name="s").runs
    with ResultsStore(results_path(tmp_path / "plain")) as store:
        plain = run_experiment(cfg, store)
        plain_rounds = store.rounds(plain.run_id)
    assert plain.summary is not None
    original = SerialExecutor.execute

    def execute(self, algorithm, msg, cohort, info):  # type: ignore[no-untyped-def]
        if info.round == stop_before:
            raise KeyboardInterrupt
        return original(self, algorithm, msg, cohort, info)

    out = tmp_path / "out"
    with ResultsStore(results_path(out)) as store:
        monkeypatch.setattr(SerialExecutor, "execute", execute)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, store)
        monkeypatch.setattr(SerialExecutor, "execute", original)
        (row,) = store.runs()
        assert row.status == "interrupted" and "resumable" in str(row.error)
        assert store.progress(row.id)[0] == stop_before  # its rounds are kept
        (ckpt,) = (out / "checkpoints").iterdir()
        resumed = run_experiment(cfg, store)
        assert resumed.run_id == row.id and resumed.status == "completed"
        (done,) = store.runs()
        assert done.status == "completed" and done.error is None
        assert resumed.summary is not None
        assert dataclasses.replace(resumed.summary, wall_seconds=0) == dataclasses.replace(
            plain.summary, wall_seconds=0
        )
        got = store.rounds(row.id)
    assert [r.round for r in got] == list(range(6))
    strip = [(r.round, r.test_accuracy, r.test_loss, r.bytes_up) for r in plain_rounds]
    assert [(r.round, r.test_accuracy, r.test_loss, r.bytes_up) for r in got] == strip
    assert not ckpt.exists() and not (out / "checkpoints").exists()


def test_no_resume_starts_a_new_run_and_drops_the_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cfg,) = study_from_mapping(tiny(), default_name="s").runs
    original = SerialExecutor.execute

    def execute(self, algorithm, msg, cohort, info):  # type: ignore[no-untyped-def]
        if info.round == 2:
            raise KeyboardInterrupt
        return original(self, algorithm, msg, cohort, info)

    with ResultsStore(results_path(tmp_path)) as store:
        monkeypatch.setattr(SerialExecutor, "execute", execute)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, store)
        monkeypatch.setattr(SerialExecutor, "execute", original)
        fresh = run_experiment(cfg, store, resume=False)
        first, second = store.runs()
        assert (first.status, second.status) == ("interrupted", "completed")
        assert fresh.run_id == second.id and len(store.rounds(second.id)) == 3
        assert len(store.rounds(first.id)) == 2
    assert not (tmp_path / "checkpoints").exists()


def test_errors_before_the_run_write_nothing(tmp_path: Path) -> None:
    doc = tiny(run={"clients_per_round": 11})  # 10 natural clients
    (cfg,) = study_from_mapping(doc, default_name="s").runs  # population unknown until loaded
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(ConfigError, match=r"run\.clients_per_round must be in \[1, 10\]"):
            run_experiment(cfg, store)
        doc = tiny(model={"hidden": 3})
        with pytest.raises(ConfigError, match=r"model\.hidden"):
            study_from_mapping(doc, default_name="s")
        assert store.runs() == []


def test_build_algorithm_is_the_object_the_config_built() -> None:
    a = AlgorithmSettings.from_mapping(
        {"name": "fedadam", "local": {"lr": 0.05, "epochs": 3}, "server": {"lr": 0.1}}
    )
    assert build_algorithm(a) == FedAvg(local=LocalTraining(lr=0.05, epochs=3), server=Adam(lr=0.1))
    prox = build_algorithm(AlgorithmSettings.from_mapping({"name": "fedprox", "mu": 0.2}))
    assert isinstance(prox, FedProx) and prox.mu == 0.2 and prox.server == SGD()
    with pytest.raises(ConfigError, match="centralized"):
        build_algorithm(AlgorithmSettings.from_mapping({"name": "centralized"}))


def test_old_flat_keys_run_bit_identical_to_the_new_form(tmp_path: Path) -> None:
    old = tomllib.loads(TINY)
    local = old["algorithm"].pop("local")
    old["algorithm"].update(
        clients_per_round=old["run"].pop("clients_per_round"),
        local_epochs=local["epochs"],
        batch_size=local["batch_size"],
        lr=local["lr"],
    )
    with pytest.warns(FutureWarning, match=r"algorithm\.local_epochs -> algorithm\.local\.epochs"):
        (cfg_old,) = study_from_mapping(old, default_name="o").runs
    (cfg_new,) = study_from_mapping(tiny(), default_name="n").runs
    with ResultsStore(results_path(tmp_path)) as store:
        a = run_experiment(cfg_old, store)
        b = run_experiment(cfg_new, store)
        recorded = store.run(a.run_id).config
    assert a.summary is not None and b.summary is not None
    assert a.summary.model_sha256 == b.summary.model_sha256
    assert (
        recorded["algorithm"]["local"]["lr"] == 0.05 and recorded["run"]["clients_per_round"] == 4
    )


@pytest.mark.dist
def test_processes_executor_matches_serial(tmp_path: Path) -> None:
    """`run.executor = "processes"` is wired through the factory: same final model as serial."""
    doc = tiny(run={"executor": "processes", "processes": 2, "rounds": 2})
    (cfg,) = study_from_mapping(doc, default_name="p").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
    assert outcome.status == "completed", outcome.error
    assert outcome.summary is not None
    assert outcome.summary.model_sha256 == direct_fedavg_sha(seed=7, rounds=2, cohort=4)


def test_parallel_section_dispatches_to_data_parallel_track(tmp_path: Path) -> None:
    doc = tiny()
    del doc["algorithm"]
    doc["parallel"] = {
        "method": "local_sgd",
        "workers": 2,
        "local_steps": 4,
        "batch_size": 16,
        "lr": 0.05,
        "sample_budget": 2000,
        "eval_every_samples": 1000,
    }
    (cfg,) = study_from_mapping(doc, default_name="par").runs
    with ResultsStore(results_path(tmp_path)) as store:
        outcome = run_experiment(cfg, store)
        rounds = store.rounds(outcome.run_id)
        row = store.run(outcome.run_id)
    assert outcome.status == "completed", outcome.error
    s = outcome.summary
    assert s is not None and s.rounds == len(rounds) >= 2
    assert s.final_accuracy == rounds[-1].test_accuracy
    assert s.bytes_up == sum(r.bytes_up for r in rounds) > 0
    assert all(r.cohort_size == 2 for r in rounds)
    assert row.config["parallel"]["method"] == "local_sgd" and "algorithm" not in row.config


@pytest.mark.slow
def test_parallel_jobs_record_every_run_with_serial_results(tmp_path: Path) -> None:
    """`jobs=2`: runs in two spawned processes write one database; models equal serial runs."""
    doc = tiny(run={"rounds": 2})
    doc["arms"] = [{"name": "a"}, {"name": "b", "run": {"seed": 8}}, {"name": "c"}]
    study = study_from_mapping(doc, default_name="j")
    with ResultsStore(results_path(tmp_path / "par")) as store:
        parallel = run_study(study, store, jobs=2)
        assert sorted(r.name for r in store.runs()) == ["a", "b", "c"]
        assert all(r.status == "completed" for r in store.runs())
        assert all(len(store.rounds(r.id)) == 2 for r in store.runs())
    assert [o.name for o in parallel] == ["a", "b", "c"]
    with ResultsStore(results_path(tmp_path / "ser")) as store:
        serial = run_study(study, store)
    assert [o.summary.model_sha256 for o in parallel if o.summary] == [
        o.summary.model_sha256 for o in serial if o.summary
    ]
    assert parallel[0].summary is not None
    assert parallel[0].summary.model_sha256 == direct_fedavg_sha(seed=7, rounds=2, cohort=4)


def test_jobs_must_be_positive(tmp_path: Path) -> None:
    study = study_from_mapping(tiny(), default_name="j")
    with ResultsStore(results_path(tmp_path)) as store, pytest.raises(ValueError, match="jobs"):
        run_study(study, store, jobs=0)


def test_missing_executor_names_the_available_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedkit.experiment.runner as runner_mod

    def missing(kind: str, **kw: object) -> None:
        raise ImportError(f"No module named 'fedkit.sim.{kind}'")

    monkeypatch.setattr(runner_mod, "build_executor", missing)
    (cfg,) = study_from_mapping(tiny(run={"executor": "vectorized"}), default_name="v").runs
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(
            ConfigError, match=r"'vectorized' is not available .* registered: serial, processes"
        ):
            run_experiment(cfg, store)
        assert store.runs() == []


def test_data_errors_found_when_loading_are_config_errors(tmp_path: Path) -> None:
    doc = tiny()
    doc["data"]["num_clients"] = 11  # Synthetic here has 10 natural clients
    (cfg,) = study_from_mapping(doc, default_name="d").runs
    with ResultsStore(results_path(tmp_path)) as store:
        with pytest.raises(ConfigError, match=r"data: data\.num_clients must be <= 10"):
            run_experiment(cfg, store)
        assert store.runs() == []


def test_resume_repeats_a_round_recorded_after_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted between recording round 1 and checkpointing it: the checkpoint says 1
    completed round, so the resume drops the recorded round 1 and runs it again."""
    from fedkit.checkpoint import FileCheckpointer

    (cfg,) = study_from_mapping(tiny(), default_name="s").runs
    with ResultsStore(results_path(tmp_path / "plain")) as store:
        plain = run_experiment(cfg, store)
    original = FileCheckpointer.save

    def save(self, completed_rounds, *args):  # type: ignore[no-untyped-def]
        if completed_rounds == 2:
            raise KeyboardInterrupt
        return original(self, completed_rounds, *args)

    with ResultsStore(results_path(tmp_path / "out")) as store:
        monkeypatch.setattr(FileCheckpointer, "save", save)
        with pytest.raises(KeyboardInterrupt):
            run_experiment(cfg, store)
        monkeypatch.setattr(FileCheckpointer, "save", original)
        (row,) = store.runs()
        assert len(store.rounds(row.id)) == 2  # rounds 0 and 1 recorded, 1 checkpointed
        resumed = run_experiment(cfg, store)
        assert [r.round for r in store.rounds(row.id)] == [0, 1, 2]
    assert resumed.summary is not None and plain.summary is not None
    assert resumed.summary.model_sha256 == plain.summary.model_sha256
    assert resumed.summary.bytes_up == plain.summary.bytes_up
