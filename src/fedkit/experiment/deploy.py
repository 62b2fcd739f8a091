"""Deployments from experiment files: the edge between ``fedkit coordinator|worker|launch`` and
:mod:`fedkit.net`.

An experiment file for a deployment is the ``fedkit run`` format plus a ``[deploy]`` section. The
sections ``[data]``, ``[model]``, ``[algorithm]`` and ``[run]`` are parsed and validated by
:mod:`fedkit.experiment.config`, and the model and algorithm are built exactly as ``fedkit run``
builds them (:mod:`fedkit.experiment.runner`), so a deployment of a file ends with the same model
as ``fedkit run`` of it. ``[deploy]`` (:class:`fedkit.net.deployment.DeploySettings`) holds the
round policy only a coordinator uses; studies (``arms``/``grid``) are not deployable. The
coordinator and every worker load the same file; the coordinator refuses workers whose file
differs (SHA-256 digest).

Privacy is planned here as ``fedkit run`` plans it (:func:`fedkit.privacy.plan.plan_privacy`):
the DP chain is checked and resolved (``expected_clients`` from the file's cohort size and
``data.num_clients``, which a DP deployment must set; the noise source stays ``"auto"``, the OS
CSPRNG), on the coordinator and on every worker alike, and the coordinator's run loop gets the
ε probe (``dp_epsilon``/``dp_delta`` in ``results.sqlite`` every round), the target-ε stop and,
with adaptive clipping, the clip norm of each round (``agg_clip_norm``). ε is a function of the
round index, so a restarted coordinator continues it.

:func:`load_deployment` turns a file into a typed :class:`~fedkit.net.deployment.Deployment`;
:func:`run_coordinator`, :func:`run_worker` and :func:`launch` hand it to :mod:`fedkit.net`, with
the results database (:class:`~fedkit.experiment.deploy_results.ResultsRecorder`) as the
coordinator's recorder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedkit.algorithm import Algorithm
from fedkit.checkpoint import write_atomic
from fedkit.experiment.attack import AttackSettings
from fedkit.experiment.config import ConfigError, ExperimentConfig, experiment_from_mapping
from fedkit.experiment.deploy_results import ResultsRecorder
from fedkit.experiment.runner import build_algorithm, model_init_seed
from fedkit.net.coordinator import serve
from fedkit.net.deployment import DeployError, Deployment, deploy_from_mapping
from fedkit.net.identity import (
    ClientIds,
    Enrolment,
    create_secrets,
    load_enrolment,
    read_secret,
)
from fedkit.net.results import Summary
from fedkit.net.transport import Security
from fedkit.net.worker import LocalData
from fedkit.net.worker import run_worker as serve_worker
from fedkit.privacy.chain import find_adaptive, find_noise
from fedkit.privacy.plan import PrivacyPlan, plan_privacy
from fedkit.run import Callback


class ExperimentError(ValueError):
    """An experiment file that cannot be deployed (names the key and the allowed values)."""


@dataclasses.dataclass(frozen=True)
class DeploymentFile:
    """An experiment file read for deployment: its validated config and what it builds."""

    config: ExperimentConfig
    deployment: Deployment
    privacy: PrivacyPlan = dataclasses.field(default_factory=lambda: PrivacyPlan(aggregator=None))


def read_deployment(path: Path) -> DeploymentFile:
    """Parse and validate an experiment file for deployment, and build what it describes.

    Raises:
        ExperimentError: a missing file, malformed TOML, an unknown key or an out-of-range value
            (messages from :mod:`fedkit.experiment.config` name the key and the allowed values).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ExperimentError(f"{path}: values nested too deeply to parse") from None
    deploy_t = doc.pop("deploy", {})
    if not isinstance(deploy_t, dict):
        raise ExperimentError("[deploy] must be a table")
    for key in ("arms", "grid"):
        if key in doc:
            raise ExperimentError(
                f"{path}: a deployment runs one experiment; remove `{key}` (studies run with "
                "`fedkit run`)"
            )
    doc.pop("study", None)
    try:
        cfg = experiment_from_mapping(doc, name=path.stem, study=path.stem)
        settings = deploy_from_mapping(deploy_t)
    except (ConfigError, DeployError) as exc:
        raise ExperimentError(str(exc)) from None
    a = cfg.algorithm
    if a is None or a.name == "centralized" or cfg.parallel is not None:
        raise ExperimentError(
            "a deployment needs a federated [algorithm] (not 'centralized', not [parallel])"
        )
    rounds = cfg.run.rounds
    if rounds is None:
        raise ExperimentError("run.rounds is required")
    try:
        algorithm = build_algorithm(a)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    privacy = _plan_privacy(cfg, algorithm)
    if privacy.aggregator is not None and privacy.aggregator is not algorithm.aggregator:
        built: Any = algorithm  # a dataclass (the registry's)
        algorithm = dataclasses.replace(built, aggregator=privacy.aggregator)
        cfg = dataclasses.replace(cfg, algorithm=dataclasses.replace(a, algorithm=algorithm))
    fed_every = cfg.run.federated_eval_every
    deployment = Deployment(
        name=cfg.name,
        digest=hashlib.sha256(raw).hexdigest(),
        data=cfg.data,
        algorithm=algorithm,
        model=cfg.model.name,
        model_options=dict(cfg.model.options),
        init_seed=model_init_seed(cfg.run.seed),
        rounds=rounds,
        seed=cfg.run.seed,
        eval_every=cfg.run.eval_every,
        # unset means after the last round only (as ``fedkit run``)
        federated_eval_every=rounds if fed_every is None else fed_every,
        target_accuracy=cfg.run.target_accuracy,
        cohort=cfg.cohort_size,
        sampler=cfg.sampler,
        deploy=settings,
    )
    return DeploymentFile(config=cfg, deployment=deployment, privacy=privacy)


def _plan_privacy(cfg: ExperimentConfig, algorithm: Any) -> PrivacyPlan:
    """The deployment's privacy plan (see the module docstring); OS noise (``seeded=False``).

    Raises:
        ExperimentError: an invalid DP chain, or one without ``data.num_clients``.
    """
    aggregator = getattr(algorithm, "aggregator", None)
    if find_noise(aggregator) is None and find_adaptive(aggregator) is None:
        return PrivacyPlan(aggregator=aggregator)
    n = cfg.data.num_clients
    if n is None:
        raise ExperimentError(
            "a deployment with a DP or adaptive clipping aggregator needs data.num_clients "
            "(the population the accountant and the cohort size are computed for)"
        )
    try:
        return plan_privacy(
            aggregator,
            weighting=getattr(algorithm, "weighting", None),
            num_clients=n,
            cohort=cfg.cohort_size(n),
            sampler=cfg.sampler,
            seeded=False,
        )
    except ValueError as exc:
        raise ExperimentError(f"aggregator: {exc}") from None


def load_deployment(path: Path) -> Deployment:
    """The :class:`~fedkit.net.deployment.Deployment` an experiment file describes.

    Raises:
        ExperimentError: see :func:`read_deployment`.
    """
    return read_deployment(path).deployment


def results_recorder(file: DeploymentFile, out_dir: Path) -> ResultsRecorder:
    """The coordinator's recorder: the results database in ``out_dir``."""
    cfg = file.config
    return ResultsRecorder(
        out_dir,
        name=cfg.name,
        study=cfg.study,
        config={**cfg.to_mapping(), "deploy": dataclasses.asdict(file.deployment.deploy)},
    )


def coordinate(
    file: DeploymentFile,
    *,
    listen: str,
    security: Security,
    out_dir: Path,
    data_root: Path | None = None,
    min_workers: int = 0,
    on_listening: Callable[[int], None] | None = None,
    enrolment: Enrolment | None = None,
) -> Summary:
    """Serve a loaded experiment file as a coordinator, recording into ``out_dir`` (with
    ``enrolment``, workers must present their client id's enrolment secret)."""
    return serve(
        file.deployment,
        listen=listen,
        security=security,
        out_dir=out_dir,
        data_root=data_root,
        min_workers=min_workers,
        on_listening=on_listening,
        recorder=results_recorder(file, out_dir),
        enrolment=enrolment,
        probes=file.privacy.probes,
        stop=file.privacy.stop,
        callbacks=_tensorboard(file, out_dir),
    )


def _tensorboard(file: DeploymentFile, out_dir: Path) -> list[Callback]:
    """``[run] tensorboard = true``: each round's scalars and each worker's round trip under
    ``OUT/tensorboard`` (:mod:`fedkit.tensorboard`)."""
    if file.config.run.tensorboard is False:
        return []
    from fedkit.tensorboard import TensorBoardCallback, tensorboard_root

    root = tensorboard_root(file.config.run.tensorboard, out_dir)
    return [] if root is None else [TensorBoardCallback(root, per_worker=True)]


def run_coordinator(
    *,
    experiment: Path,
    listen: str,
    out_dir: Path,
    data_root: Path | None = None,
    security: Security | None = None,
    threads: int = 1,
    min_workers: int = 0,
    secret_file: Path | None = None,
) -> Summary:
    """Load the experiment file, serve it, and write ``OUT/summary.json`` at the end
    (``secret_file``: the run secret of ``fedkit secrets create``; workers must enrol)."""
    torch.set_num_threads(max(1, threads))
    summary = coordinate(
        read_deployment(experiment),
        listen=listen,
        security=security or Security(),
        out_dir=out_dir,
        data_root=data_root,
        min_workers=min_workers,
        enrolment=None if secret_file is None else load_enrolment(secret_file),
    )
    write_atomic(out_dir / "summary.json", json.dumps(dataclasses.asdict(summary)).encode())
    return summary


def run_worker(
    *,
    coordinator: str,
    experiment: Path,
    client_ids: Sequence[int],
    data_root: Path | None = None,
    security: Security | None = None,
    tls_name: str | None = None,
    state_dir: Path | None = None,
    threads: int = 1,
    give_up_s: float = 120.0,
    attack: AttackSettings | None = None,
    secret_file: Path | None = None,
    secret_dir: Path | None = None,
) -> int:
    """Load the experiment file and serve these clients until the run ends (tasks accepted).

    A client attacks when the file's ``[attack]`` names it among the attackers, or when
    ``attack`` (``fedkit worker --attack``) is given: that attack then replaces the file's for
    every client this worker serves. ``secret_file`` holds the one client id's enrolment secret
    (``client-<id>.secret``); ``secret_dir`` holds one such file per client id.
    """
    file = read_deployment(experiment)
    if secret_file is not None and len(client_ids) != 1:
        raise ExperimentError("--secret-file is for one client id; give --secret-dir instead")
    if secret_file is not None:
        secrets_: list[str] = [read_secret(secret_file)]
    elif secret_dir is not None:
        secrets_ = [read_secret(secret_dir / f"client-{c}.secret") for c in client_ids]
    else:
        secrets_ = []
    return serve_worker(
        coordinator=coordinator,
        exp=file.deployment,
        client_ids=client_ids,
        data_root=data_root,
        security=security,
        tls_name=tls_name,
        state_dir=state_dir,
        threads=threads,
        give_up_s=give_up_s,
        enrolment_secrets=secrets_,
        adapt=attack_adapter(attack or file.config.attack, file.config.run.seed, client_ids),
    )


def attack_adapter(
    attack: AttackSettings | None, seed: int, client_ids: Sequence[int]
) -> Callable[[Algorithm[Any, Any, Any, Any], LocalData], Algorithm[Any, Any, Any, Any]] | None:
    """What makes a worker's client run ``attack`` when it is one of the attackers (the same
    set as the simulator's, from the population and the seed), or ``None`` without an attack."""
    if attack is None:
        return None

    def adapt(
        algorithm: Algorithm[Any, Any, Any, Any], local: LocalData
    ) -> Algorithm[Any, Any, Any, Any]:
        try:
            return attack.wrap(
                algorithm,
                num_clients=local.num_clients,
                seed=seed,
                num_classes=local.num_classes,
                only=frozenset(client_ids),
            )
        except ConfigError as exc:
            raise ExperimentError(str(exc)) from None

    return adapt


def worker_command(
    *,
    address: str,
    experiment: Path,
    clients: ClientIds,
    data_root: Path | None,
    secret_dir: Path | None = None,
) -> list[str]:
    """The command line of one local worker process (``python -m fedkit worker …``)."""
    cmd = [
        sys.executable, "-m", "fedkit", "worker", "--coordinator", address,
        "--experiment", str(experiment), "--clients", str(clients).replace(" ", ""),
    ]  # fmt: skip
    if data_root is not None:
        cmd += ["--data", str(data_root)]
    if secret_dir is not None:
        cmd += ["--secret-dir", str(secret_dir)]
    return cmd


def client_blocks(num_clients: int, workers: int) -> list[ClientIds]:
    """``0..num_clients-1`` cut into ``workers`` contiguous blocks whose sizes differ by at most
    one (the first ``num_clients % workers`` blocks take the extra id)."""
    size, extra = divmod(num_clients, workers)
    blocks, lo = [], 0
    for k in range(workers):
        hi = lo + size + (k < extra)
        blocks.append(ClientIds.of([(lo, hi - 1)]))
        lo = hi
    return blocks


def worker_env() -> dict[str, str]:
    """Environment for worker processes: one thread per process (shared small machines)."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    return env


def launch(
    file: DeploymentFile,
    experiment_path: Path,
    *,
    workers: int,
    out_dir: Path,
    data_root: Path | None = None,
) -> Summary:
    """``fedkit launch``: a coordinator here and ``workers`` local worker processes, for demos.

    The coordinator runs in this process on a free loopback port; each worker is a separate Python
    process (one torch thread each) serving a contiguous block of the client ids (one each when
    ``workers`` equals ``data.num_clients``), with its log in ``OUT/worker-<k>.log``. Fresh
    enrolment secrets are made in ``OUT/secrets`` (mode 0600) and each worker reads only its own
    clients', so no other local process can take a client id.
    """
    num_clients = file.deployment.data.num_clients
    if num_clients is None:
        raise ValueError(
            "fedkit launch needs data.num_clients in the file (the population it splits among "
            "the local workers)"
        )
    if not 1 <= workers <= num_clients:
        raise ValueError(
            f"--workers {workers} must be in 1..data.num_clients = {num_clients}: each local "
            "worker serves at least one client id"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir = out_dir / "secrets"
    create_secrets(secrets_dir, clients=num_clients)
    procs: list[subprocess.Popen[bytes]] = []

    def start_workers(port: int) -> None:
        for k, block in enumerate(client_blocks(num_clients, workers)):
            log = (out_dir / f"worker-{k}.log").open("ab")
            cmd = worker_command(
                address=f"127.0.0.1:{port}",
                experiment=experiment_path,
                clients=block,
                data_root=data_root,
                secret_dir=secrets_dir,
            )
            procs.append(
                subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env())
            )
            log.close()

    try:
        return coordinate(
            file,
            listen="127.0.0.1:0",
            security=Security(),
            out_dir=out_dir,
            data_root=data_root,
            on_listening=start_workers,
            min_workers=num_clients,  # every client id registered (min_workers counts clients)
            enrolment=load_enrolment(secrets_dir / "run.secret"),
        )
    finally:
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
