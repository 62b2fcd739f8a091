"""A bounded fuzz test of the experiment loader (issue 18, part 6).

Several hundred mutated experiment files — byte flips, deleted, duplicated and truncated lines,
numbers replaced by huge, negative, boolean, string or non-finite values, values nested deep —
from a seeded generator (the same cases on every run). Every case must end in a typed error
(:class:`ConfigError` from ``fedkit run``'s loader, :class:`ExperimentError` from the deployment
loader) or a valid config, within a time limit per case: never another exception, never a hang. A
config that loads holds only bounded numbers (finite floats, ints within int64) — the old loader
accepted ``rounds = 10^30`` here.
"""

from __future__ import annotations

import math
import random
import re
import signal
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import FrameType

import pytest

from fedkit.experiment.config import MAX_ROUNDS, ConfigError, ExperimentConfig, load_study
from fedkit.experiment.deploy import DeploymentFile, ExperimentError, read_deployment

SEEDS = [
    """
[data]
dataset = "synthetic"
partition = "natural"
alpha = 1.0
beta = 1.0

[model]
name = "mlp"
hidden = [20, 10]

[algorithm]
name = "fedprox"
mu = 0.01

[algorithm.local]
lr = 0.05
epochs = 1
batch_size = 10

[aggregator]
name = "trimmed_mean"
beta = 0.1

[run]
rounds = 3
clients_per_round = 5
eval_every = 1
seed = 7

[deploy]
deadline_s = 30.0
quorum = 0.8
max_update_mib = 64
max_missed_tasks = 2
""",
    """
[data]
dataset = "mnist"
partition = "dirichlet"
num_clients = 20
alpha = 0.5
seed = 1

[model]
name = "cnn"

[algorithm]
name = "fedadam"

[algorithm.server]
lr = 0.01
beta1 = 0.9

[sampler]
name = "uniform"

[run]
rounds = 10
client_fraction = 0.2
federated_eval_every = 5
target_accuracy = 0.9
""",
    """
[data]
dataset = "synthetic"
partition = "iid"
num_clients = 8

[model]
name = "logreg"

[algorithm]
name = "scaffold"

[attack]
name = "sign_flip"
fraction = 0.25

[run]
rounds = 2
""",
]

NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?![\w.])")
REPLACEMENTS = [
    "1" + "0" * 30, str(2**63), str(-(2**63) - 1), "9223372036854775807", "-1", "0", "-0.0",
    "1e308", "-1e308", "inf", "-inf", "nan", "true", "false", '"x"', '""', "[]", "{}",
    "[1, 2]", "{ a = 1 }", "1.5", "0.0001", "2147483648",
]  # fmt: skip
CASES = 400
PER_CASE_S = 5.0
TYPED = (ConfigError, ExperimentError)


def mutate(rng: random.Random, text: str) -> str:
    """One seeded mutation of an experiment file's text (sometimes two stacked)."""
    lines = text.splitlines()
    kind = rng.randrange(8)
    if kind == 0:  # flip one bit of one byte
        raw = bytearray(text.encode())
        i = rng.randrange(len(raw))
        raw[i] ^= 1 << rng.randrange(8)
        return raw.decode("utf-8", "replace")
    if kind == 1 and lines:  # delete a line
        del lines[rng.randrange(len(lines))]
    elif kind == 2 and lines:  # duplicate a line (a key or a table header twice)
        i = rng.randrange(len(lines))
        lines.insert(rng.randrange(len(lines) + 1), lines[i])
    elif kind in (3, 4, 5):  # replace one number
        spots = [(i, m) for i, ln in enumerate(lines) for m in NUMBER.finditer(ln)]
        if spots:
            i, m = rng.choice(spots)
            lines[i] = lines[i][: m.start()] + rng.choice(REPLACEMENTS) + lines[i][m.end() :]
    elif kind == 6:  # nest a value deep (arrays or inline tables)
        depth = rng.choice([5, 33, 200, 3000])
        value = "[" * depth + "1" + "]" * depth if rng.random() < 0.5 else "{a=" * depth + "1"
        value += "" if value.startswith("[") else "}" * depth
        keyed = [i for i, ln in enumerate(lines) if "=" in ln]
        if keyed:
            i = rng.choice(keyed)
            lines[i] = lines[i].split("=")[0] + "= " + value
    else:  # truncate
        text = text[: rng.randrange(len(text))]
        return mutate(rng, text) if rng.random() < 0.3 and text else text
    out = "\n".join(lines) + "\n"
    return mutate(rng, out) if rng.random() < 0.25 else out


def cases() -> Iterator[tuple[int, str]]:
    rng = random.Random(20240618)
    for n in range(CASES):
        yield n, mutate(rng, SEEDS[n % len(SEEDS)])


class Hang(Exception):
    pass


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise Hang


def unbounded(value: object, where: str = "") -> str | None:
    """The first number in a loaded config's tables that is not finite or not an int64."""
    if isinstance(value, Mapping):
        found = (unbounded(v, f"{where}.{k}") for k, v in value.items())
        return next((f for f in found if f), None)
    if isinstance(value, list | tuple):
        return next((f for f in (unbounded(v, where) for v in value) if f), None)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and not -(2**63) <= value < 2**63:
        return f"{where} = {value}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} = {value}"
    return None


def configs(loaded: object) -> list[ExperimentConfig]:
    if isinstance(loaded, DeploymentFile):
        return [loaded.config]
    return list(getattr(loaded, "runs", []))


def outcome(load: Callable[[Path], object], path: Path) -> str:
    """'ok', 'typed', or a failure description."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, PER_CASE_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = load(path)
        for cfg in configs(loaded):
            found = unbounded(cfg.to_mapping())
            if found is None and (cfg.run.rounds or 1) > MAX_ROUNDS:
                found = f"run.rounds = {cfg.run.rounds}"
            if found is not None:
                return f"accepted an unbounded value: {found}"
        return "ok"
    except TYPED:
        return "typed"
    except Hang:
        return f"hang (> {PER_CASE_S} s)"
    except Exception as exc:  # exactly what the test is looking for
        return f"{type(exc).__name__}: {exc}"[:300]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_the_seed_files_are_valid(tmp_path: Path) -> None:
    for i, text in enumerate(SEEDS):
        f = tmp_path / f"seed{i}.toml"
        f.write_text(text)
        assert outcome(load_study, f) == "ok"
        assert outcome(read_deployment, f) == "ok"


def test_mutated_experiment_files_end_in_a_typed_error_or_a_valid_config(tmp_path: Path) -> None:
    t0 = time.monotonic()
    bad: list[str] = []
    seen = {"ok": 0, "typed": 0}
    for n, text in cases():
        f = tmp_path / f"case{n}.toml"
        f.write_text(text, encoding="utf-8")
        for name, load in (("load_study", load_study), ("read_deployment", read_deployment)):
            res = outcome(load, f)  # type: ignore[arg-type]
            if res in seen:
                seen[res] += 1
            else:
                bad.append(f"case {n} ({name}): {res}\n---\n{text[:400]}")
    took = time.monotonic() - t0
    assert not bad, f"{len(bad)} cases escaped:\n" + "\n\n".join(bad[:5])
    # the mutations reach both sides: some files stay valid, most are refused
    assert seen["ok"] > 20 and seen["typed"] > 300, seen
    assert took < 60, f"{CASES} cases took {took:.1f} s"


@pytest.mark.parametrize("n", [0, 1, 2])
def test_mutation_is_seeded(n: int) -> None:
    first = dict(cases())
    assert first[n] == dict(cases())[n]
