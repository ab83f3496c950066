"""Checking configuration values against the settings dataclasses, by pydantic's rules.

The settings (:mod:`.config`) are frozen dataclasses whose fields say their type and
bounds (:func:`setting`); :func:`validate_settings` turns a mapping of sections (from the
file, the environment and the flags) into them. It converts as pydantic's lax mode
does, so that a file or variable means what it meant when the settings were pydantic
models (``"8080"`` and ``8080.0`` are the port 8080, ``"yes"`` is true, ``"4MiB"`` is
a size), and it reports every problem at once, by key (``server.port``,
``models[2].path``), in pydantic's words.
``tests/config/test_env.py`` holds it to a pydantic model built from the same
dataclasses (:func:`.config_env.pydantic_model`) over many files and environments.

pydantic is not used here because importing it is about a third of the server's
start-up time; the request types load it with the first request that needs them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Before:
    """A conversion applied to a value before its type is checked (pydantic's
    ``BeforeValidator``); it raises ``ValueError`` for a value it refuses."""

    convert: Callable[[Any], Any]


@dataclass(frozen=True)
class Bounds:
    """Numeric bounds of a field: ``ge``/``gt`` below, ``le`` above."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None


def setting(
    default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None
) -> Any:
    """A dataclass field with a default and bounds that :func:`validate_settings` checks."""
    return dataclasses.field(default=default, metadata={"bounds": Bounds(ge=ge, gt=gt, le=le)})


class SettingsInvalid(ValueError):
    """Values that do not make settings: ``problems`` holds ``(dotted key, message)``
    pairs; the text is all of them on one line."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {message}" for key, message in problems))


class _Invalid(Exception):
    def __init__(self, message: str, value: Any = None, *, show: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.value = value
        self.show = show

    def described(self) -> str:
        shown = self.value
        if self.show and (isinstance(shown, (str, int, float, bool)) or shown is None):
            return f"{self.message} (got {shown!r})"
        return self.message


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise _Invalid(
                "Input should be a valid integer, got a number with a fractional part", value
            )
        return int(value)
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if number.is_integer():
            return int(number)
        raise _Invalid(
            "Input should be a valid integer, unable to parse string as an integer", value
        )
    raise _Invalid("Input should be a valid integer", value)


def _to_float(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise _Invalid(
                "Input should be a valid number, unable to parse string as a number", value
            ) from None
    raise _Invalid("Input should be a valid number", value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _Invalid("Input should be a valid boolean, unable to interpret input", value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Invalid("Input should be a valid string", value)


def _number(bound: float) -> str:
    """A bound as pydantic writes it (``0.0`` as ``0``)."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _check_bounds(value: float, bounds: Bounds) -> None:
    if bounds.ge is not None and not value >= bounds.ge:
        raise _Invalid(f"Input should be greater than or equal to {_number(bounds.ge)}", value)
    if bounds.gt is not None and not value > bounds.gt:
        raise _Invalid(f"Input should be greater than {_number(bounds.gt)}", value)
    if bounds.le is not None and not value <= bounds.le:
        raise _Invalid(f"Input should be less than or equal to {_number(bounds.le)}", value)


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    str: _to_str,
}


class _Checker:
    """Converts one mapping into a settings dataclass, collecting every problem."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []

    def fail(self, key: str, problem: _Invalid) -> None:
        self.problems.append((key, problem.described()))

    def section(self, cls: type[T], values: Any, key: str) -> T | None:
        if isinstance(values, cls):
            return values
        if not isinstance(values, Mapping):
            name = cls.__name__
            self.fail(
                key or name,
                _Invalid(f"Input should be a valid dictionary or instance of {name}", values),
            )
            return None
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        settings_class: type = cls
        hints = field_hints(settings_class)
        converted: dict[str, Any] = {}
        ok = True
        for name, f in fields.items():
            where = f"{key}.{name}" if key else name
            if name in values:
                raw = values[name]
            elif f.default is not dataclasses.MISSING:
                raw = f.default
            elif f.default_factory is not dataclasses.MISSING:  # a section, or an empty list
                raw = f.default_factory()
            else:
                self.fail(where, _Invalid("Field required", show=False))
                ok = False
                continue
            try:
                converted[name] = self.value(hints[name], raw, where, f.metadata.get("bounds"))
            except _Invalid as problem:
                self.fail(where, problem)
                ok = False
            except _SectionInvalid:
                ok = False
        for name in values:
            if name not in fields:
                where = f"{key}.{name}" if key else str(name)
                self.problems.append((where, "unknown key"))
                ok = False
        return cls(**converted) if ok else None

    def value(self, hint: Any, raw: Any, key: str, bounds: Bounds | None) -> Any:
        origin = typing.get_origin(hint)
        if origin is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            for extra in extras:
                if isinstance(extra, Before):
                    try:
                        raw = extra.convert(raw)
                    except ValueError as exc:
                        raise _Invalid(f"Value error, {exc}", raw) from None
            return self.value(hint, raw, key, bounds)
        if origin in (typing.Union, types.UnionType):
            # ``X | None``: None as it is, anything else checked as ``X``.
            inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
            if len(inner) != 1:
                raise TypeError(f"{key}: only X | None is a settings union")
            return None if raw is None else self.value(inner[0], raw, key, bounds)
        if dataclasses.is_dataclass(hint):
            section = self.section(hint, raw, key)  # type: ignore[arg-type]
            if section is None:
                raise _SectionInvalid
            return section
        if origin is Literal:
            choices = typing.get_args(hint)
            if raw in choices and isinstance(raw, str):
                return raw
            listed = ", ".join(repr(choice) for choice in choices[:-1])
            raise _Invalid(f"Input should be {listed} or {choices[-1]!r}", raw)
        if origin is list:
            (item,) = typing.get_args(hint)
            if isinstance(raw, (str, bytes, Mapping)) or not isinstance(
                raw, (list, tuple, set, frozenset)
            ):
                raise _Invalid("Input should be a valid list", raw)
            items, ok = [], True
            for index, one in enumerate(raw):
                where = f"{key}[{index}]"
                try:
                    items.append(self.value(item, one, where, None))
                except _Invalid as problem:
                    self.fail(where, problem)
                    ok = False
                except _SectionInvalid:
                    ok = False
            if not ok:
                raise _SectionInvalid
            return items
        converted = _SCALARS[hint](raw)
        if bounds is not None:
            try:
                _check_bounds(converted, bounds)
            except _Invalid as problem:
                problem.value = raw  # as it was given ("nan", not nan)
                raise
        return converted


class _SectionInvalid(Exception):
    """A section's (or a list's) own problems are already recorded."""


@functools.cache
def field_hints(cls: type) -> dict[str, Any]:
    """The field types of a settings dataclass, ``Annotated`` extras kept. (Its
    annotations are strings, ``from __future__ import annotations``: resolved once.)"""
    return typing.get_type_hints(cls, include_extras=True)


def validate_settings(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` (a settings dataclass) from ``values``; :class:`SettingsInvalid` names
    every key whose value cannot be used, and every unknown key."""
    checker = _Checker()
    built = checker.section(cls, values, "")
    if built is None or checker.problems:
        raise SettingsInvalid(checker.problems)
    return built
