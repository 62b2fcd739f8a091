"""Bounded parsing (issue 18, part 6): integer ranges for every count and size, booleans never
numbers, JSON headers from peers with a depth limit, ``fedkit coordinator`` validating as
``fedkit run`` does, and storage errors ending in one line naming the file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedkit.experiment.config import (
    MAX_CLIENTS,
    MAX_MODEL_SIZE,
    MAX_ROUNDS,
    ConfigError,
    load_study,
)
from fedkit.experiment.deploy import ExperimentError, read_deployment
from fedkit.net.codec import MAX_HEADER_DEPTH, encode, json_depth, read_header
from fedkit.net.errors import ErrorCode, NetError

BASE = """
[data]
dataset = "synthetic"
partition = "natural"
[model]
name = "logreg"
[algorithm]
name = "fedavg"
[run]
rounds = 1
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def with_key(section: str, line: str) -> str:
    key = line.split("=")[0].strip()
    base = "".join(ln + "\n" for ln in BASE.splitlines() if not ln.startswith(f"{key} = "))
    return base.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)


@pytest.mark.parametrize(
    ("section", "line", "needle"),
    [
        (
            "run",
            "rounds = 1_000_000_000_000",
            f"run.rounds must be an int >= 1 and <= {MAX_ROUNDS}",
        ),
        ("run", "eval_every = 10_000_000", "run.eval_every must be an int >= 0 and <= 1000000"),
        ("run", "clients_per_round = 100_000_000", f"<= {MAX_CLIENTS}"),
        ("run", "threads = 100_000", "run.threads must be an int >= 1 and <= 1024"),
        ("run", "seed = 99999999999999999999", "run.seed must be an int in [-2^63, 2^63 - 1]"),
        ("data", "num_clients = 1_000_000_000", "data.num_clients must be an int >= 1 and <="),
        ("data", "seed = -1", "data.seed must be an int >= 0"),
        ("data", "beta = 9223372036854775807", "data.beta must be a finite number >= 0 and <="),
        ("model", "", ""),  # placeholder replaced below (model options need another model)
    ],
)
def test_huge_counts_are_refused_naming_key_and_range(
    tmp_path: Path, section: str, line: str, needle: str
) -> None:
    if section == "model":
        text = BASE.replace('name = "logreg"', f'name = "mlp"\nhidden = [{10**12}]')
        needle = f"model.hidden must hold ints >= 1 and <= {MAX_MODEL_SIZE}"
    else:
        text = with_key(section, line)
        if section == "data" and "num_clients" in line:
            text = text.replace('partition = "natural"', 'partition = "iid"')
    with pytest.raises(ConfigError, match=None) as e:
        load_study(write(tmp_path, text))
    assert needle in str(e.value)
    with pytest.raises(ExperimentError) as e2:  # the deployment loader says the same
        read_deployment(write(tmp_path, text))
    assert needle in str(e2.value)


@pytest.mark.parametrize(
    ("section", "line", "needle"),
    [
        ("run", "rounds = true", "run.rounds must be an int"),
        ("run", "seed = false", "run.seed must be an int"),
        ("run", "target_accuracy = true", "run.target_accuracy"),
        ("data", "seed = true", "data.seed must be an int"),
        ("data", "beta = true", "data.beta must be a number"),
        ("algorithm.local", "steps = true", "algorithm.local.steps must be an int"),
        ("deploy", "liveness_s = true", "deploy.liveness_s = True"),
        ("deploy", "max_missed_tasks = true", "deploy.max_missed_tasks = True"),
    ],
)
def test_booleans_are_not_numbers(tmp_path: Path, section: str, line: str, needle: str) -> None:
    text = BASE + f"\n[{section}]\n{line}\n" if section not in BASE else with_key(section, line)
    with pytest.raises(ExperimentError) as e:
        read_deployment(write(tmp_path, text))
    assert needle in str(e.value)


@pytest.mark.parametrize(
    ("model", "option", "needle"),
    [
        ("mlp", 'hidden = "x"', "model.hidden must be an array; got 'x'"),
        ("mlp", "hidden = [true]", "model.hidden[0] must be an int; got True"),
        ("mlp", "hidden = [0]", "model.hidden must hold ints >= 1"),
        ("char_lstm", "fused = 1", "model.fused must be true or false; got 1"),
        ("char_lstm", "hidden_size = 2.5", "model.hidden_size must be an int; got 2.5"),
    ],
)
def test_model_options_are_typed_and_bounded(
    tmp_path: Path, model: str, option: str, needle: str
) -> None:
    text = BASE.replace('name = "logreg"', f'name = "{model}"\n{option}')
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, text))
    assert needle in str(e.value)


def test_honest_model_options_still_load(tmp_path: Path) -> None:
    text = BASE.replace('name = "logreg"', 'name = "mlp"\nhidden = [200, 200]')
    assert read_deployment(write(tmp_path, text)).config.model.options["hidden"] == [200, 200]


# ------------------------------------------------------------------------ JSON headers from peers
def header_payload(header: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header


@pytest.mark.parametrize("depth", [MAX_HEADER_DEPTH + 1, 500, 100_000])
def test_deeply_nested_json_headers_are_malformed_not_a_recursion_error(depth: int) -> None:
    deep = b'{"__metadata__":{"x":"y"},"t":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(NetError) as e:
        read_header(header_payload(deep))
    assert e.value.code is ErrorCode.MALFORMED and "nested deeper" in e.value.detail


def test_brackets_inside_strings_do_not_count_and_real_headers_pass() -> None:
    assert json_depth(b'{"a":"[[[[{{{{\\"[[["}') == 1
    assert json_depth(b'{"a":{"b":[1,[2]]}}') == 4
    assert json_depth(b"") == 0
    import torch

    payload = encode({"w": torch.zeros(2, 3)}, {"k": "[[[[[[[[[[[["})
    (n,) = struct.unpack("<Q", payload[:8])
    assert json_depth(payload[8 : 8 + n]) == 3  # object, entry, shape list
    specs, meta = read_header(payload)
    assert specs["w"].shape == (2, 3) and meta == {"k": "[[[[[[[[[[[["}
    assert json.loads(payload[8 : 8 + n])  # the scan agrees with a real parse here


# ------------------------------------------------------------------------ the commands
def cli(*args: str) -> tuple[int, str]:
    from fedkit.cli import _mount, app

    _mount()
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def one_line_error(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ('name = "mlp"\nhidden = "x"', "model.hidden must be an array"),  # at load time
        ('name = "cnn"', "model: model 'cnn': input_shape must be (C, H, W)"),  # at build time
    ],
)
def test_coordinator_and_worker_refuse_a_bad_model_in_one_line(
    tmp_path: Path, model: str, needle: str
) -> None:
    exp = write(tmp_path, BASE.replace('name = "logreg"', model))
    code, out = cli("coordinator", "--experiment", str(exp), "--out", str(tmp_path / "o"),
                    "--listen", "127.0.0.1:0")  # fmt: skip
    assert code == 2 and needle in one_line_error(out)
    assert not (tmp_path / "o" / "coordinator.db").exists()  # nothing written before the check
    code, out = cli("worker", "--experiment", str(exp), "--coordinator", "127.0.0.1:1",
                    "--client-id", "0")  # fmt: skip
    assert code == 2 and needle in one_line_error(out)


@pytest.mark.parametrize("name", ["coordinator.db", "results.sqlite"])
def test_a_corrupt_database_ends_in_one_line_naming_it(tmp_path: Path, name: str) -> None:
    exp = write(tmp_path, BASE)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    (out_dir / name).write_bytes(b"not a database at all " * 200)
    code, out = cli("coordinator", "--experiment", str(exp), "--out", str(out_dir),
                    "--listen", "127.0.0.1:0")  # fmt: skip
    line = one_line_error(out)
    assert code == 2 and str(out_dir / name) in line and "move" in line
    assert (out_dir / name).read_bytes() == b"not a database at all " * 200  # left as it was


def test_an_output_directory_that_cannot_be_made_ends_in_one_line(tmp_path: Path) -> None:
    exp = write(tmp_path, BASE)
    (tmp_path / "file").write_text("x")
    code, out = cli("coordinator", "--experiment", str(exp), "--out", str(tmp_path / "file" / "o"),
                    "--listen", "127.0.0.1:0")  # fmt: skip
    line = one_line_error(out)
    assert code == 2 and str(tmp_path / "file" / "o") in line and "writable" in line


def test_a_corrupt_worker_state_file_ends_in_one_line_naming_it(tmp_path: Path) -> None:
    exp = write(tmp_path, BASE.replace('name = "fedavg"', 'name = "scaffold"'))
    state = tmp_path / "state"
    state.mkdir()
    (state / "client-0.safetensors").write_bytes(b"\xff" * 300)
    code, out = cli("worker", "--experiment", str(exp), "--coordinator", "127.0.0.1:1",
                    "--client-id", "0", "--state-dir", str(state))  # fmt: skip
    line = one_line_error(out)
    assert code == 3 and str(state / "client-0.safetensors") in line and "move it away" in line
    assert (state / "client-0.safetensors").read_bytes() == b"\xff" * 300


def test_a_missing_secret_file_ends_in_one_line(tmp_path: Path) -> None:
    exp = write(tmp_path, BASE)
    code, out = cli("coordinator", "--experiment", str(exp), "--out", str(tmp_path / "o"),
                    "--secret-file", str(tmp_path / "nope"))  # fmt: skip
    assert code == 2 and "fedkit secrets create" in one_line_error(out)
    exp2 = write(tmp_path, BASE + '\n[deploy]\nenrolment = "secret"\n', "e.toml")
    code, out = cli("coordinator", "--experiment", str(exp2), "--out", str(tmp_path / "o2"),
                    "--listen", "127.0.0.1:0")  # fmt: skip
    assert code == 2 and "--secret-file" in one_line_error(out)
