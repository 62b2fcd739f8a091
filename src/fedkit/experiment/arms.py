"""Arms and ``--set`` overrides for experiment files outside ``fedkit run``'s schema.

``fedkit decentral`` and ``fedkit vertical`` read files with their own sections; this module
holds what they share: reading the TOML, setting dotted keys, and expanding ``[[arms]]`` (each
arm a ``name`` plus dotted keys over the base) into one resolved document per run.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedkit.experiment.tables import ConfigError, did_you_mean

__all__ = ["Resolved", "expand_arms", "read_toml"]

Resolved = tuple[str, str, dict[str, Any]]
"""One run: its name, its study's name, and the resolved document (no ``arms``/``study``)."""


def read_toml(path: str | Path) -> dict[str, Any]:
    """The parsed file, or a :class:`ConfigError` naming what was wrong."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from e


def _leaves(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in table.items():
        if isinstance(v, Mapping) and v:
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def with_keys(
    doc: Mapping[str, Any], overrides: Mapping[str, Any], sections: Sequence[str]
) -> dict[str, Any]:
    """A deep copy of ``doc`` with each dotted key of ``overrides`` set (its first part must
    be one of ``sections``)."""
    out: dict[str, Any] = copy.deepcopy(dict(doc))
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) < 2 or not all(parts) or parts[0] not in sections:
            raise ConfigError(
                f"override key {key!r} must be section.key with a section of "
                f"{', '.join(sections)} (e.g. {sections[-1]}.seed)"
            )
        node = out
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {key!r}: {p!r} is a value, not a table")
            node = child
        node[parts[-1]] = value
    return out


def expand_arms(
    doc: Mapping[str, Any],
    sections: Sequence[str],
    *,
    default_name: str,
    overrides: Mapping[str, Any] | None = None,
) -> list[Resolved]:
    """One resolved document per ``[[arms]]`` entry (or the base alone), overrides applied last.

    Raises:
        ConfigError: an unknown section, a malformed ``[study]`` or ``[[arms]]``, an arm
            without a name, or repeated arm names.
    """
    allowed = ("study", *sections, "arms")
    unknown = sorted(set(doc) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown section [{unknown[0]}]{did_you_mean(unknown[0], allowed)}; "
            f"allowed: {', '.join(allowed)}"
        )
    study = doc.get("study", {})
    if not isinstance(study, Mapping):
        raise ConfigError("[study] must be a table")
    study_name = str(study.get("name", default_name))
    over = dict(overrides or {})
    base = {k: v for k, v in doc.items() if k not in ("study", "arms")}
    arms = doc.get("arms", [])
    if not isinstance(arms, list) or not all(isinstance(a, Mapping) for a in arms):
        raise ConfigError("[[arms]] must be an array of tables")
    if not arms:
        return [(study_name, study_name, with_keys(base, over, sections))]
    out: list[Resolved] = []
    for i, arm in enumerate(arms):
        name = arm.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"arms[{i}] needs a 'name' string")
        body = _leaves({k: v for k, v in arm.items() if k != "name"})
        out.append((name, study_name, with_keys(base, {**body, **over}, sections)))
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"arm names must be distinct, got {names}")
    return out
