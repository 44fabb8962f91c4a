"""Typed dataclasses from nested mappings: unknown keys refused, YAML's numbers made the declared type, and
`key.path=value` overrides. Knows nothing of the pipeline's sections; `config.py` builds `PipelineConfig` with it."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import yaml


def from_dict(cls: type, d: dict[str, Any]) -> Any:
    """Build dataclass `cls` from a (possibly partial) nested dict, rejecting unknown keys."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in d.items():
        hint = hints[key]
        sub = dataclass_in(hint)
        kwargs[key] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else coerce(hint, value, key)
    return cls(**kwargs)


def dataclass_in(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def coerce(hint: Any, value: Any, key: str = "") -> Any:
    # YAML gives lists for tuples and ints for floats; make them the declared type. YAML 1.1 (PyYAML) also reads
    # an exponent without a dot (`--set train.lr=1e-5`) as text: a number field takes it as the number it spells.
    origin = typing.get_origin(hint)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    numeric = hint is float or (origin in (typing.Union, types.UnionType) and float in typing.get_args(hint))
    if not numeric or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{key or 'a number field'}: expected a number, got {value!r}") from None
    return value


def apply_override(d: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form key.path=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = d
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            raise ValueError(f"override {assignment!r}: {key!r} is not a config section")
        node = node[key]
    if keys[-1] not in node:
        raise ValueError(f"override {assignment!r}: unknown key {keys[-1]!r}; known: {sorted(node)}")
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def deep_update(base: dict, new: dict, cls: type) -> None:
    """Merge a config file into `base` section by section. A mapping that is a value (e.g. `model.backbone_kwargs`)
    is replaced whole, so a later file never inherits keys meant for an earlier file's backbone."""
    hints = typing.get_type_hints(cls)
    for key, value in new.items():
        section = dataclass_in(hints[key]) if key in hints else None
        if section is not None and isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value, section)
        else:
            base[key] = value
