"""How one TOML table of a spec becomes a typed dataclass section, strictly.

``build_section`` rejects a key the dataclass has no field for (``unknown_key`` suggests the
closest known one), requires the fields without a default and checks every value against
its type hint (``coerce``): bool, int, float, str and lists of them. ``render.spec`` builds
each ``[section]`` with it and then checks the values' ranges itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from render.errors import SpecError


def unknown_key(where: str, section: str, key: str, known: Any) -> str:
    """The error for an unknown key, with the closest known one as a suggestion."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    place = f"[{section}].{key}" if section else f"[{key}]"
    return f"{where}: unknown key {place}{hint}; known: {', '.join(sorted(known))}"


def build_section(cls: type, table: Any, where: str, section: str) -> Any:
    """An instance of the dataclass ``cls`` from the TOML table ``table`` (strict keys)."""
    if not isinstance(table, dict):
        raise SpecError(f"{where}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise SpecError(unknown_key(where, section, key, fields))
    values = {}
    for name, f in fields.items():
        if name in table:
            values[name] = coerce(table[name], hints[name], f"{where}: [{section}].{name}", name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SpecError(f"{where}: [{section}] is missing the required key {name!r}")
    return cls(**values)


def coerce(value: Any, hint: Any, where: str, name: str) -> Any:
    """``value`` checked against the type ``hint`` (ints widen to floats, never bools)."""
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if name in ("split", "mesh_split", "light_split") and isinstance(value, str):
            value = [value]  # a single split may be written as a string
        if not isinstance(value, list):
            raise SpecError(f"{where} must be a list, got {value!r}")
        return [coerce(v, item, f"{where}[{i}]", name) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise SpecError(f"{where}: unsupported type {hint}")
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except OverflowError:  # TOML integers have no size limit, floats do
            raise SpecError(
                f"{where} must be a finite number, got an integer above 1e308"
            ) from None
    if hint is str:
        if not isinstance(value, str):
            raise SpecError(f"{where} must be a string, got {value!r}")
        return value
    raise SpecError(f"{where}: unsupported type {hint}")
