"""The whole ``fedkit`` command tree: ``--version``, help text printed as written, no ``<bool>``."""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from fedkit.cli import _mount, app

runner = CliRunner()


@pytest.fixture(scope="module")
def root() -> TyperGroup:
    _mount()
    command = typer.main.get_command(app)
    assert isinstance(command, TyperGroup)
    return command


def _paths(group: TyperGroup, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(path, command)`` for every command and group under ``group``."""
    for name, sub in group.commands.items():
        yield (*prefix, name), sub
        if isinstance(sub, TyperGroup):
            yield from _paths(sub, (*prefix, name))


def _help(path: tuple[str, ...]) -> str:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, (path, result.output)
    return result.output


def test_version_is_the_installed_distributions(root: TyperGroup) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"fedkit {version('fedkit')}\n"


def test_every_help_prints_brackets_and_no_bool_metavar(root: TyperGroup) -> None:
    commands = dict(_paths(root))
    assert {("run",), ("data", "list"), ("data", "download"), ("worker",)} <= set(commands)
    for path, cmd in commands.items():
        text = _help(path)
        assert "<bool>" not in text, path
        # every "[...]" written in a parameter's help survives (rich markup used to eat it)
        for param in cmd.params:
            helptext = getattr(param, "help", None) or ""
            for chunk in helptext.split("[")[1:]:
                token = "[" + chunk.split("]")[0] + "]"
                assert token in text, (path, token)
    assert "its [data] table is the data spec" in _help(("data", "describe"))


@pytest.mark.parametrize("command", ["worker", "coordinator", "launch"])
def test_deploy_help_documents_data_lookup_and_verbose(root: TyperGroup, command: str) -> None:
    text = " ".join(_help((command,)).split())
    assert "--verbose" in text and "INFO level" in text
    if command == "worker":
        assert "$FEDKIT_DATA, else ../shared/data beside a source checkout" in text
