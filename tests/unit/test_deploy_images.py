"""Lint of the container images and the compose file in ``deploy/`` (no container runtime in CI).

What a build would catch before it runs, checked from the files: every base image pinned to a
version; PyTorch pinned to the CPU build and version of ``scripts/install.sh`` and installed before
fedkit (else pip pulls the CUDA build); the NumPy worker's image free of torch and fedkit; every
``COPY`` source present in the build context and not excluded by the Dockerfile's ignore file;
every ``fedkit`` command and option an image or a compose service runs present in the CLI; every
compose build, target and bind-mounted file present (certificates: those ``fedkit certs create``
writes for the compose's coordinator host and worker count), one worker per client id of the
mounted experiment file. A slow test runs the compose commands as written, as local processes on
loopback with the container paths mapped to directories.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.core import TyperGroup

from fedkit.cli import _mount, app
from fedkit.experiment.deploy import load_deployment
from fedkit.net.tls import create_certs
from tests.helpers.serve import constant_bundle

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = sorted(DEPLOY.glob("*Dockerfile"))
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# ----------------------------------------------------------------------------- Dockerfile parser
@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction (continuation lines joined), variables not yet expanded."""

    op: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ``ENTRYPOINT``/``CMD``/``HEALTHCHECK CMD``."""
        text = self.args
        if self.op == "HEALTHCHECK":  # options, then CMD and the command
            text = text.split("CMD ", 1)[1].strip() if "CMD " in text else ""
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    """A build stage: its base, name, arguments in scope and instructions."""

    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    body: list[Instruction] = field(default_factory=list)

    def expand(self, text: str) -> str:
        """``text`` with ``${ARG}``/``$ARG`` replaced by the arguments' defaults."""
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: self.args.get(m[1] or m[2], m[0]), text)

    def last(self, op: str) -> Instruction | None:
        found = [i for i in self.body if i.op == op]
        return found[-1] if found else None


def parse_dockerfile(text: str) -> list[Stage]:
    """The stages of a Dockerfile (comments and blank lines dropped, ``\\`` continuations
    joined; ``ENTRYPOINT``/``CMD`` inherited from the stage a ``FROM`` names)."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if not pending:
            start = n
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        full = pending + stripped
        pending = ""
        op, _, args = full.partition(" ")
        instructions.append(Instruction(op.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends inside a continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in instructions:
        if ins.op == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]  # --platform=…
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            parent = next((s for s in stages if s.name == words[0]), None)
            stage = Stage(base=words[0], name=name, args=dict(global_args))
            if parent is not None:  # a stage built on another inherits its arguments and command
                stage.args = dict(parent.args)
                stage.body = [i for i in parent.body if i.op in ("ENTRYPOINT", "CMD")]
            stages.append(stage)
        elif ins.op == "ARG":
            key, _, default = ins.args.partition("=")
            (stages[-1].args if stages else global_args)[key] = default.strip('"')
        else:
            assert stages, f"line {ins.line}: {ins.op} before FROM"
            stages[-1].body.append(ins)
    return stages


def stages_of(path: Path) -> list[Stage]:
    return parse_dockerfile(path.read_text())


def test_parser_joins_continuations_and_inherits_commands() -> None:
    text = (
        "# c\nARG V=1\nFROM img:1.2.3 AS a\nARG T=x\nRUN echo \\\n  # inner comment\n"
        '  ${T} $V\nENTRYPOINT ["a"]\nFROM a AS b\nCMD ["b"]\n'
    )
    a, b = parse_dockerfile(text)
    assert (a.base, a.name, b.base, b.name) == ("img:1.2.3", "a", "a", "b")
    run = a.body[0]
    assert (run.op, run.line, a.expand(run.args)) == ("RUN", 5, "echo x 1")
    assert b.last("ENTRYPOINT") is not None and b.last("CMD") is not None
    assert [b.last("ENTRYPOINT").exec_form(), b.last("CMD").exec_form()] == [["a"], ["b"]]  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli() -> TyperGroup:
    _mount()
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group


def check_fedkit_command(cli: TyperGroup, argv: list[str]) -> None:
    """``fedkit ARGV`` names an existing command and only options that command has."""
    assert argv, "empty fedkit command"
    cmd: Any = cli
    words = list(argv)
    path = []
    while isinstance(cmd, TyperGroup) and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = cmd.commands.get(name)
        assert sub is not None, f"`fedkit {' '.join([*path, name])}` is not a fedkit command"
        path.append(name)
        cmd = sub
    options = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    for w in words:
        if w.startswith("-"):
            opt = w.split("=", 1)[0]
            assert opt in options, f"`fedkit {' '.join(path)}` has no option {opt}"


def test_check_fedkit_command_fails_on_unknown_commands_and_options(cli: TyperGroup) -> None:
    check_fedkit_command(cli, ["worker", "--client-id", "0", "--tls-dir", "/certs"])
    check_fedkit_command(cli, ["certs", "create", "--out", "x", "--workers", "3"])
    with pytest.raises(AssertionError, match="not a fedkit command"):
        check_fedkit_command(cli, ["wrker", "--client-id", "0"])
    with pytest.raises(AssertionError, match="no option --client"):
        check_fedkit_command(cli, ["worker", "--client", "0"])


def fedkit_commands(stages: list[Stage]) -> Iterator[list[str]]:
    """Every ``fedkit ...`` command line an image runs (RUN lines, entry point + command)."""
    for stage in stages:
        for ins in stage.body:
            if ins.op == "RUN":
                for part in re.split(r"&&|;|\|\|", stage.expand(ins.args)):
                    words = shlex.split(part)
                    if words and words[0] == "fedkit":
                        yield words[1:]
        entry, cmd = stage.last("ENTRYPOINT"), stage.last("CMD")
        if entry is not None:
            argv = entry.exec_form()
            assert argv is not None, f"line {entry.line}: ENTRYPOINT must be an exec-form array"
            if argv[0] == "fedkit":
                tail = cmd.exec_form() if cmd is not None else []
                assert tail is not None, f"line {cmd.line}: CMD must be an exec-form array"  # type: ignore[union-attr]
                yield argv[1:] + tail


# ----------------------------------------------------------------------------- Dockerfiles
def test_there_are_images_for_coordinator_worker_and_serve() -> None:
    stages = stages_of(DEPLOY / "Dockerfile")
    entries = {s.name: s.last("ENTRYPOINT") for s in stages}
    for role in ("coordinator", "worker", "serve"):
        entry = entries.get(role)
        assert entry is not None and entry.exec_form() == ["fedkit", role], role


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_base_images_are_pinned(path: Path) -> None:
    stages = stages_of(path)
    names = {s.name for s in stages if s.name}
    for stage in stages:
        base = stage.expand(stage.base)
        if base in names:
            continue
        _, _, tag = base.partition(":")
        assert "@sha256:" in base or re.search(r"\d+\.\d+\.\d+", tag), (
            f"{path.name}: base image {base!r} is not pinned to a version (X.Y.Z tag or digest)"
        )


def install_script_torch() -> str:
    """The torch version scripts/install.sh pins for CPU machines."""
    text = (REPO / "scripts" / "install.sh").read_text()
    pins = set(re.findall(r'"torch==([0-9][0-9.]*)"', text))
    assert len(pins) == 1, f"scripts/install.sh pins torch as {pins}"
    return pins.pop()


def pip_installs(stage: Stage) -> list[tuple[int, list[str]]]:
    """``(line, words)`` of every ``pip install`` a stage runs, arguments expanded."""
    found = []
    for ins in stage.body:
        if ins.op != "RUN":
            continue
        for part in re.split(r"&&|;", stage.expand(ins.args)):
            words = shlex.split(part)
            if "pip" in words and "install" in words:
                found.append((ins.line, words))
    return found


def test_fedkit_images_pin_the_cpu_torch_of_the_install_script_before_fedkit() -> None:
    base = stages_of(DEPLOY / "Dockerfile")[0]
    installs = pip_installs(base)
    torch_at = [i for i, (_, w) in enumerate(installs) if any(x.startswith("torch") for x in w)]
    fedkit_at = [i for i, (_, w) in enumerate(installs) if "." in w]
    assert len(torch_at) == 1 and len(fedkit_at) == 1, installs
    line, words = installs[torch_at[0]]
    assert f"torch=={install_script_torch()}" in words, (line, words)
    assert words[words.index("--index-url") + 1] == CPU_INDEX, (line, words)
    assert torch_at[0] < fedkit_at[0], "torch must be installed before fedkit (else: CUDA torch)"


def test_numpy_worker_image_has_no_torch_and_no_fedkit() -> None:
    (stage,) = stages_of(DEPLOY / "numpy-worker.Dockerfile")
    for line, words in pip_installs(stage):
        for w in words:
            assert not re.match(r"(torch|fedkit)\b", w), f"line {line}: installs {w}"
            if not w.startswith("-") and w not in ("pip", "install"):
                assert re.fullmatch(r"[\w-]+==[\d.]+", w), f"line {line}: {w} is not pinned"
    copies = [i.args for i in stage.body if i.op == "COPY"]
    assert copies and all(c.startswith("examples/numpy_worker/") for c in copies), copies


def ignore_patterns(dockerfile: Path) -> list[str]:
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.exists(), f"{ignore.name} missing: the build would send the whole repository"
    lines = [ln.strip() for ln in ignore.read_text().splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def sent_to_builder(rel: str, patterns: list[str]) -> bool:
    """Whether ``rel`` (a context path) survives the ignore patterns (last match wins)."""
    keep = True
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.removeprefix("!").rstrip("/")
        parts = Path(rel).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pat) for p in prefixes) or fnmatch.fnmatch(rel, pat):
            keep = negate
    return keep


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_builder(path: Path) -> None:
    patterns = ignore_patterns(path)
    assert patterns[0] == "*", "ignore everything, then name what the image needs"
    for stage in stages_of(path):
        for ins in stage.body:
            if ins.op != "COPY" or "--from=" in ins.args:
                continue
            *sources, _ = shlex.split(ins.args)
            for src in sources:
                matches = sorted(REPO.glob(src))
                assert matches, f"{path.name} line {ins.line}: COPY source {src} does not exist"
                for m in matches:
                    files = [m] if m.is_file() else [f for f in m.rglob("*.py")]
                    for f in files:
                        rel = f.relative_to(REPO).as_posix()
                        assert sent_to_builder(rel, patterns), f"{rel} is excluded from the context"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_fedkit_command_an_image_runs_exists(cli: TyperGroup, path: Path) -> None:
    commands = list(fedkit_commands(stages_of(path)))
    if path.name == "Dockerfile":
        assert ["--version"] in commands and len(commands) >= 4
    for argv in commands:
        check_fedkit_command(cli, argv)


# ----------------------------------------------------------------------------- compose
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def binds(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) of a service's bind mounts."""
    out = {}
    for v in service.get("volumes", []):
        src, dst, *_ = v.split(":")
        if src.startswith((".", "/")):
            out[dst] = src
    return out


def service_argv(service: dict[str, Any]) -> list[str]:
    """The command a compose service runs: its image target's entry point, then ``command``."""
    build = service["build"]
    stages = stages_of((DEPLOY / build["context"] / build["dockerfile"]).resolve())
    stage = next(s for s in stages if s.name == build["target"])
    entry = stage.last("ENTRYPOINT")
    assert entry is not None
    argv = entry.exec_form()
    assert argv is not None
    return argv + list(service.get("command", []))


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


def workers_of(compose: dict[str, Any]) -> dict[str, list[str]]:
    return {
        name: service_argv(s)
        for name, s in services(compose).items()
        if service_argv(s)[:2] == ["fedkit", "worker"]
    }


def test_compose_builds_existing_targets_and_runs_existing_commands(
    cli: TyperGroup, compose: dict[str, Any]
) -> None:
    roles = set()
    for name, s in services(compose).items():
        build = s["build"]
        dockerfile = (DEPLOY / build["context"] / build["dockerfile"]).resolve()
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
        assert build["target"] in {st.name for st in stages_of(dockerfile)}, name
        argv = service_argv(s)
        assert argv[0] == "fedkit", name
        check_fedkit_command(cli, argv[1:])
        roles.add(argv[1])
    assert roles == {"coordinator", "worker", "serve"}


def test_compose_mounts_exist_and_each_container_gets_only_its_own_key(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    workers = workers_of(compose)
    coordinator = services(compose)["coordinator"]
    _, port = option(service_argv(coordinator), "--listen").rsplit(":", 1)
    # the certificate files the documented `fedkit certs create` writes for this compose file
    create_certs(tmp_path, coordinator_hosts=["coordinator"], workers=len(workers))
    made = {p.name for p in tmp_path.iterdir()}
    for name, s in services(compose).items():
        argv = service_argv(s)
        mounts = binds(s)
        for target, src in mounts.items():
            rel = Path(src)
            if rel.parts[0] == "certs":
                assert rel.name in made, f"{name}: {src} is not a file `fedkit certs create` writes"
                assert Path(target).name == rel.name and target.startswith("/certs/"), name
            elif rel.parts[0] != "bundle":  # the bundle is `fedkit export`'s output
                assert (DEPLOY / rel).exists(), f"{name}: {src} does not exist"
        keys = sorted(Path(t).name for t in mounts if t.endswith(".key"))
        if argv[1] == "worker":
            tls = option(argv, "--tls-name")
            assert keys == [f"{tls}.key"], f"{name} mounts keys {keys}"
            assert option(argv, "--coordinator") == f"coordinator:{port}"
        elif argv[1] == "coordinator":
            assert keys == ["coordinator.key"]
        # every container path a command names is mounted (or a volume)
        targets = set(mounts) | {v.split(":")[1] for v in s.get("volumes", [])}
        for w in argv:
            if w.startswith("/") and w not in targets:
                inside = any(w.startswith(t + "/") or t.startswith(w + "/") for t in targets)
                assert inside, f"{name}: {w} is not mounted"
            if w == "--tls-dir":
                assert option(argv, w) == "/certs" and "/certs/ca.pem" in targets, name


def test_compose_runs_one_worker_per_client_of_its_experiment(compose: dict[str, Any]) -> None:
    workers = workers_of(compose)
    coordinator = service_argv(services(compose)["coordinator"])
    experiment = DEPLOY / binds(services(compose)["coordinator"])["/config/experiment.toml"]
    num_clients = tomllib.loads(experiment.read_text())["data"]["num_clients"]
    ids = sorted(int(option(argv, "--client-id")) for argv in workers.values())
    assert ids == list(range(num_clients))
    assert int(option(coordinator, "--min-workers")) == num_clients
    for name, argv in workers.items():
        assert option(argv, "--tls-name") == f"worker-{option(argv, '--client-id')}", name
        # every worker mounts the coordinator's experiment file (it refuses another one)
        mounted = binds(services(compose)[name])["/config/experiment.toml"]
        assert mounted == f"./{experiment.relative_to(DEPLOY).as_posix()}", name
    load_deployment(experiment)  # deployable as written


# ----------------------------------------------------------------------------- run as written
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def localise(argv: list[str], root: Path, port: int) -> list[str]:
    """A service's command with its container paths under ``root`` and the compose network's
    host name and ports (7070, the endpoint's 8000) replaced by loopback ones."""
    out = []
    for i, w in enumerate(argv):
        if w.startswith("/"):
            w = str(root) + w
        w = w.replace("coordinator:7070", f"localhost:{port}")
        w = w.replace("0.0.0.0:7070", f"127.0.0.1:{port}").replace("0.0.0.0", "127.0.0.1")
        if i > 0 and argv[i - 1] == "--port":
            w = str(port)
        out.append(w)
    return out


def mount(service: dict[str, Any], root: Path, certs: Path) -> None:
    """Give ``root`` exactly the service's bind mounts (certificates from ``certs``)."""
    for target, src in binds(service).items():
        dst = root / target.lstrip("/")
        if Path(src).parts[0] == "bundle":
            continue  # the endpoint's bundle is exported into place
        dst.parent.mkdir(parents=True, exist_ok=True)
        origin = certs / Path(src).name if src.startswith("./certs/") else DEPLOY / src
        dst.write_bytes(origin.read_bytes())
        dst.chmod(0o600 if dst.suffix == ".key" else 0o644)
    (root / "state").mkdir(parents=True, exist_ok=True)


@pytest.mark.slow
@pytest.mark.net
def test_compose_commands_run_as_written(compose: dict[str, Any], tmp_path: Path) -> None:
    # The certificates are made for "localhost" (the containers' "coordinator"); each service
    # gets a root directory holding exactly its mounts, as the container would.
    certs = tmp_path / "certs"
    workers = workers_of(compose)
    create_certs(certs, coordinator_hosts=["localhost"], workers=len(workers))
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        for name, s in services(compose).items():
            argv = service_argv(s)
            if argv[1] == "serve":
                continue  # started below, on the run's exported model
            root = tmp_path / name
            mount(s, root, certs)
            cmd = [sys.executable, "-m", "fedkit", *localise(argv[1:], root, port)]
            procs[name] = subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        out, err = procs["coordinator"].communicate(timeout=240)
        assert procs["coordinator"].returncode == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        rounds = tomllib.loads((DEPLOY / "experiment.toml").read_text())["run"]["rounds"]
        assert summary["committed_rounds"] == rounds
        for name in workers:
            _, werr = procs[name].communicate(timeout=60)
            assert procs[name].returncode == 0, werr[-3000:]

        # The compose run's model is the simulator's (`fedkit run` of the same file).
        ran = subprocess.run(
            [sys.executable, "-m", "fedkit", "run", str(DEPLOY / "experiment.toml"),
             "--out", str(tmp_path / "sim"), "--json"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert ran.returncode == 0, ran.stderr[-3000:]
        assert (
            json.loads(ran.stdout.strip().splitlines()[-1])["model_sha256"]
            == summary["model_sha256"]
        )

        # The endpoint, by the serve service's command on a mounted bundle (`fedkit serve`
        # serves next-word bundles: the serve tests' constant one), probed by the image's
        # HEALTHCHECK command.
        serve_root = tmp_path / "serve"
        mount(services(compose)["serve"], serve_root, certs)
        constant_bundle(serve_root / "bundle")
        serve_port = free_port()
        argv = localise(service_argv(services(compose)["serve"])[1:], serve_root, serve_port)
        procs["serve"] = subprocess.Popen(
            [sys.executable, "-m", "fedkit", *argv],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        stage = next(st for st in stages_of(DEPLOY / "Dockerfile") if st.name == "serve")
        check = stage.last("HEALTHCHECK")
        assert check is not None
        probe = [w.replace(":8000/", f":{serve_port}/") for w in check.exec_form() or []]
        assert probe[0] == "python" and str(serve_port) in probe[-1], probe
        for _ in range(120):
            healthy = subprocess.run(
                [sys.executable, *probe[1:]], capture_output=True, text=True, timeout=30
            )
            if healthy.returncode == 0 or procs["serve"].poll() is not None:
                break
            time.sleep(0.5)
        if healthy.returncode != 0:
            serve = procs["serve"]
            detail = serve.stderr.read() if serve.poll() is not None and serve.stderr else ""
            raise AssertionError(f"endpoint not healthy: {healthy.stderr}{detail}"[-3000:])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=10)


def documented_fedkit_commands() -> Iterator[tuple[str, list[str]]]:
    """``fedkit …`` command lines in the compose file's comments and in docs/deploy.md's
    Containers section (code blocks and inline code), where an operator copies them from."""
    compose = COMPOSE.read_text()
    for line in compose.splitlines():
        text = line.lstrip("# ").strip()
        if text.startswith("fedkit "):
            yield "deploy/compose.yaml", shlex.split(text)[1:]
    doc = (REPO / "docs" / "deploy.md").read_text()
    section = doc.split("## Containers", 1)[1].split("\n## ", 1)[0]
    for where, text in (("deploy/compose.yaml", compose), ("docs/deploy.md", section)):
        for inline in re.findall(r"`(fedkit [^`]+)`", text):
            yield where, shlex.split(inline)[1:]
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#", 1)[0])
            if words[:1] == ["fedkit"]:
                yield "docs/deploy.md", words[1:]
            elif words[:2] == ["docker", "run"] and "--entrypoint" in words:
                image = next(i for i, w in enumerate(words[2:], 2) if ":" in w and "/" not in w)
                yield "docs/deploy.md", words[image + 1 :]


def test_documented_fedkit_commands_exist(cli: TyperGroup) -> None:
    found = list(documented_fedkit_commands())
    assert {w[0] for _, w in found} >= {"certs", "export"}, found
    for where, argv in found:
        try:
            check_fedkit_command(cli, argv)
        except AssertionError as err:
            raise AssertionError(f"{where}: fedkit {' '.join(argv)}: {err}") from None
