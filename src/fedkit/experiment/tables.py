"""TOML tables → the library's dataclasses, through their own fields (the config edge).

:func:`build` takes a table with a ``name``, finds the class (or factory) in a
:class:`fedkit.registry.Registry`, merges the entry's preset under the table and calls the class
with the table's keys. Each key must be one of the class's fields (dataclass fields, or keyword
parameters of a plain class); its value is checked against the field's annotation (``int``,
``float``, ``bool``, ``str``, ``Literal[...]``, optional and tuple types) and:

* a nested table for a dataclass-typed field builds that dataclass (``[algorithm.local]`` →
  :class:`fedkit.local.LocalTraining`);
* a nested table (or a bare name) for a field annotated with a registry's protocol builds a
  registered part (``[algorithm.server]`` → a server optimiser; an aggregator wrapper's
  ``[aggregator.inner]`` → the inner aggregator).

Range checks are NOT repeated here: they live once, in the classes' ``__post_init__``. Their
``ValueError``/``TypeError`` becomes a :class:`ConfigError` naming the dotted key (``"beta1 must be
in [0, 1), got 1.5"`` from ``[algorithm.server]`` reads ``"algorithm.server.beta1 must be in [0,
1), got 1.5"``). :func:`describe` is the inverse: an object back to a plain table.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Union

from fedkit.registry import REGISTRIES, Registry, UnknownNameError

__all__ = [
    "INT64_MAX",
    "ConfigError",
    "build",
    "check_keys",
    "check_value",
    "construct",
    "describe",
    "merge_preset",
]

INT64_MAX = 2**63 - 1
"""Largest integer any field accepts (ints end up in torch / numpy int64; larger ones overflow
there with a traceback instead of a message naming the key)."""


class ConfigError(ValueError):
    """An experiment file or override is malformed or invalid; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class _Param:
    annotation: Any  # resolved type, or None when unknown
    has_default: bool
    default: Callable[[], Any] = lambda: None  # the default value (made on demand)


def _const(value: Any) -> Any:
    return value


def _hints(obj: Any) -> dict[str, Any]:
    try:
        return typing.get_type_hints(obj)
    except Exception:  # an annotation that cannot be resolved is simply not checked
        return {}


def _params(factory: Callable[..., Any]) -> dict[str, _Param]:
    """The keyword arguments ``factory`` accepts, with their annotations."""
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        hints = _hints(factory)
        out = {}
        for f in dataclasses.fields(factory):
            if not f.init:
                continue
            if f.default_factory is not dataclasses.MISSING:
                out[f.name] = _Param(hints.get(f.name), True, f.default_factory)
            elif f.default is not dataclasses.MISSING:
                out[f.name] = _Param(hints.get(f.name), True, functools.partial(_const, f.default))
            else:
                out[f.name] = _Param(hints.get(f.name), False)
        return out
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    hints = _hints(vars(factory).get("__init__") if isinstance(factory, type) else factory)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {
        p.name: _Param(
            hints.get(p.name),
            p.default is not inspect.Parameter.empty,
            functools.partial(_const, None if p.default is inspect.Parameter.empty else p.default),
        )
        for p in sig.parameters.values()
        if p.kind in kinds
    }


def _registry_for(annotation: Any) -> Registry | None:
    """The registry whose protocol is ``annotation`` (``Aggregator[...]`` counts), if any."""
    target = typing.get_origin(annotation) or annotation
    if not isinstance(target, type):
        return None
    for reg in REGISTRIES:
        if reg.protocol is not None and reg.protocol_type() is target:
            return reg
    return None


def merge_preset(preset: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` over ``preset``: nested tables merge, unless they name different parts (then the
    table's replaces the preset's, so ``fedavgm`` with ``server.name = "adam"`` drops the
    preset's SGD momentum)."""
    out: dict[str, Any] = dict(preset)
    for k, v in table.items():
        base = out.get(k)
        if isinstance(v, Mapping) and isinstance(base, Mapping):
            same = "name" not in v or "name" not in base or v["name"] == base["name"]
            out[k] = merge_preset(base, v) if same else dict(v)
        else:
            out[k] = v
    return out


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an int"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _convert(tp: Any, v: Any, key: str, default: Callable[[], Any] = lambda: None) -> Any:
    """``v`` checked against the annotation ``tp`` (and built, for tables); see module docstring.

    A table for a registered part without a ``name`` builds the same kind as the field's
    ``default`` (``[algorithm.server] lr = 0.5`` for FedAvg is an SGD).
    """
    if tp is None or tp is Any:
        return v
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if v is None:
            return v
        if len(args) == 1:
            return _convert(args[0], v, key)
        for a in args:
            try:
                return _convert(a, v, key)
            except ConfigError:
                continue
        raise ConfigError(
            f"{key} must be one of the types {', '.join(_type_name(a) for a in args)}; got {v!r}"
        )
    if origin is Literal:
        allowed = typing.get_args(tp)
        if v not in allowed or type(v) is not type(allowed[0]):
            raise ConfigError(f"{key} must be one of {', '.join(map(str, allowed))}; got {v!r}")
        return v
    reg = _registry_for(tp)
    if reg is not None:
        if isinstance(v, str):
            return build(reg, {"name": v}, key)
        if isinstance(v, Mapping):
            if "name" in v:
                return build(reg, v, key)
            current = default()
            return build(reg, v, key, default=None if current is None else reg.name_of(current))
        if isinstance(v, (bool, int, float, list)):
            raise ConfigError(f"{key} must be a table with a name ({reg.allowed()}); got {v!r}")
        return v  # an already built object (a Python caller)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(v, Mapping):
            return construct(tp, v, key)
        if isinstance(v, tp):
            return v
        raise ConfigError(f"{key} must be a table of {tp.__name__} fields; got {v!r}")
    if tp is bool:
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false; got {v!r}")
        return v
    if tp is int:
        if not _is_int(v):
            raise ConfigError(f"{key} must be an int; got {v!r}")
        if not -INT64_MAX - 1 <= v <= INT64_MAX:
            raise ConfigError(f"{key} must be an int in [-2^63, 2^63 - 1]; got {v!r}")
        return v
    if tp is float:
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(float(v)):
            raise ConfigError(f"{key} must be a finite number; got {v!r}")
        return float(v)
    if tp is str:
        if not isinstance(v, str):
            raise ConfigError(f"{key} must be a string; got {v!r}")
        return v
    if origin is tuple or tp is tuple:
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key} must be an array; got {v!r}")
        targs = typing.get_args(tp)
        items: list[Any] = list(v)
        if len(targs) == 2 and targs[1] is Ellipsis:
            items = [_convert(targs[0], x, f"{key}[{i}]") for i, x in enumerate(items)]
        return tuple(items)
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(v, Mapping):
            raise ConfigError(f"{key} must be a table; got {v!r}")
        return dict(v)
    return v


def check_value(tp: Any, v: Any, key: str) -> Any:
    """``v`` checked against the annotation ``tp`` as a field of a built class would be (for
    keyword options that are not built through :func:`construct`, e.g. a model's)."""
    return _convert(tp, v, key)


def _located(exc: Exception, key: str, fields: Mapping[str, _Param]) -> str:
    """Prefix a class's validation message with the dotted key of the field it names.

    The classes' messages start with the field's name (``"mu must be ..."``) or a longer
    spelling of it (``"server_lr must be ..."`` for ``lr``).
    """
    msg = str(exc)
    first, _, rest = msg.partition(" ")
    word = first.rstrip(":,")
    for f in sorted(fields, key=len, reverse=True):
        if word == f or word.endswith("_" + f):
            return f"{key}.{f}{first[len(word) :]} {rest}".rstrip()
    return f"{key}: {msg}"


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to a misspelt ``word``
    (:func:`difflib.get_close_matches`, similarity ratio at least 0.6), else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_keys(table: Mapping[str, Any], allowed: typing.Sequence[str], key: str) -> None:
    """Refuse a key of ``table`` (the ``[key]`` table) that is not in ``allowed``.

    Raises:
        ConfigError: Names the first unknown key (sorted), the closest allowed key
            (:func:`did_you_mean`) and the allowed ones: ``unknown key data.aplha in [data]
            (did you mean 'alpha'?); allowed: dataset, partition, …``.
    """
    unknown = sorted(str(k) for k in set(table) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown key {key}.{unknown[0]} in [{key}]{did_you_mean(unknown[0], allowed)}; "
            f"allowed: {', '.join(allowed) or '(none)'}"
        )


def construct(
    factory: Callable[..., Any],
    table: Mapping[str, Any],
    key: str,
    *,
    named: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Call ``factory`` with the keys of ``table`` (checked and built; see module docstring).

    Args:
        factory: A class (dataclass or plain) or function.
        table: The keys (without ``name``).
        key: The table's dotted key, for messages (``"algorithm.local"``).
        named: The table also has a ``name`` (listed among the allowed keys).
        extra: Already built keyword arguments passed as they are.

    Raises:
        ConfigError: An unknown key (the message lists the allowed ones), a value of the wrong
            type, or a value the class rejects.
    """
    params = _params(factory)
    extra = dict(extra or {})
    if set(table) - set(params):
        check_keys(table, (["name"] if named else []) + [p for p in params if p not in extra], key)
    kwargs = {
        k: _convert(params[k].annotation, v, f"{key}.{k}", params[k].default)
        for k, v in table.items()
    }
    kwargs.update(extra)
    missing = [p for p, spec in params.items() if not spec.has_default and p not in kwargs]
    if missing:
        raise ConfigError(f"missing key {key}.{missing[0]} in [{key}]")
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(_located(e, key, params)) from e


def build(
    registry: Registry,
    table: Mapping[str, Any],
    key: str,
    *,
    default: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Build the part a table names: ``registry[table["name"]]`` with the table's other keys.

    Args:
        registry: Where ``name`` is looked up (a registered name or an import path).
        table: The TOML table.
        key: Its dotted key, for messages (``"algorithm"``, ``"aggregator.inner"``).
        default: The name when the table has none (``None``: ``name`` is required).
        extra: Already built keyword arguments (e.g. the algorithm's ``aggregator``).

    Raises:
        ConfigError: No or unknown name, an unknown key, a wrong type or an invalid value.
    """
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{key}] must be a table; got {table!r}")
    name = table.get("name", default)
    if name is None:
        raise ConfigError(f"[{key}] needs 'name', one of {registry.allowed()}")
    if not isinstance(name, str):
        raise ConfigError(f"{key}.name must be a string, one of {registry.allowed()}; got {name!r}")
    try:
        entry = registry.entry(name)
        factory = entry.load()
    except UnknownNameError as e:
        raise ConfigError(f"{key}.name: {e}") from None
    body = merge_preset(entry.preset, {k: v for k, v in table.items() if k != "name"})
    return construct(factory, body, key, named=True, extra=extra)


def _plain(v: Any, annotation: Any = None) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items() if x is not None}
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        reg = _registry_for(annotation)
        return describe(v, name=None if reg is None else reg.name_of(v))
    return v


def describe(obj: Any, *, name: str | None = None, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``obj`` as a plain table that :func:`build` / :func:`construct` turns back into an equal
    object: ``name`` first (when given), then every init field (``None`` values left out; a field
    typed with a registry's protocol as a table with its own ``name``)."""
    out: dict[str, Any] = {} if name is None else {"name": name}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            if f.init and f.name not in skip:
                v = getattr(obj, f.name)
                if v is not None:
                    out[f.name] = _plain(v, hints.get(f.name))
    return out
