"""One strict base for settings saved beside artifacts: :class:`StrictConfig`.

A config is a dataclass deriving from ``StrictConfig``. At construction every field annotated
with ``Literal[...]`` (optionally ``| None``) is checked against its choices, and nested configs
given as dicts are built; :meth:`StrictConfig.from_dict` refuses unknown keys, listing the
accepted ones, so a typo in a saved or hand-written config is an error, never a silent default.
:meth:`StrictConfig.to_dict` gives plain JSON data (nested configs as dicts, tuples as lists).
A subclass adds its own checks in ``check()`` (called after the choices are checked).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, get_args, get_origin

from threads_search.errors import ConfigError

C = TypeVar("C", bound="StrictConfig")


def _choices(tp) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (``| None`` adds None), else None."""
    if get_origin(tp) is Literal:
        return get_args(tp)
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = get_args(tp)
        lits = [a for a in args if get_origin(a) is Literal]
        if lits and all(a is type(None) or get_origin(a) is Literal for a in args):
            out = tuple(v for a in lits for v in get_args(a))
            return out + ((None,) if type(None) in args else ())
    return None


def _nested(tp) -> type | None:
    """The StrictConfig class of a field annotated with one (optionally ``| None``)."""
    for a in (tp, *get_args(tp)):
        if isinstance(a, type) and issubclass(a, StrictConfig):
            return a
    return None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@dataclasses.dataclass
class StrictConfig:
    """Base of the features, segmentation, training and index configs (module docstring)."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            tp, value = hints.get(f.name), getattr(self, f.name)
            sub = _nested(tp)
            if sub is not None and isinstance(value, dict):
                setattr(self, f.name, sub.from_dict(value))
                continue
            allowed = _choices(tp)
            if allowed is not None and value not in allowed:
                shown = ", ".join(repr(a) for a in allowed)
                raise ConfigError(
                    f"{type(self).__name__}.{f.name} must be one of {shown}, got {value!r}"
                )
        self.check()

    def check(self) -> None:
        """Further checks of a subclass; raise ``ConfigError`` naming the field and the fix."""

    @classmethod
    def fields(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], ignore: Iterable[str] = ()) -> C:
        """The config of ``data`` (as written by :meth:`to_dict`); keys in ``ignore`` (e.g.
        versions saved beside the settings) are skipped, any other unknown key is refused.
        Missing keys take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
        known = cls.fields()
        unknown = sorted(set(data) - set(known) - set(ignore))
        if unknown:
            raise ConfigError(
                f"{cls.__name__}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"accepted: {', '.join(known)}"
            )
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data: nested configs as dicts, tuples as lists."""
        return _plain(dataclasses.asdict(self))

    def replace(self: C, **changes) -> C:
        """A copy with ``changes`` (checked like a new config)."""
        return dataclasses.replace(self, **changes)


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v
