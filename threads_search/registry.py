"""A name → factory registry, one per pluggable part (``create_*``/``list_*`` pairs, as ``timm``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from threads_search.errors import ConfigError

T = TypeVar("T")


class UnknownNameError(ConfigError, KeyError):
    """A name that no registry entry has (a slide or molecular encoder, an index type...): a
    setting outside its choices, the message listing the available names. A ``KeyError`` too,
    for callers that caught one; unlike a plain ``KeyError`` its text is the message itself,
    without quotes."""

    __str__ = Exception.__str__


class Registry(Generic[T]):
    """Factories keyed by name. ``kind`` names the part in error messages ("patch encoder")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}
        self._info: dict[str, Any] = {}

    def register(
        self, name: str, info: Any = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: register ``factory`` under ``name`` with optional static ``info``."""

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:  # a bug in the code registering, not a user error
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            self._info[name] = info
            return factory

        return deco

    def names(self) -> list[str]:
        return sorted(self._factories)

    def info(self, name: str) -> Any:
        self._check(name)
        return self._info[name]

    def create(self, name: str, **kwargs: Any) -> T:
        self._check(name)
        return self._factories[name](**kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def _check(self, name: str) -> None:
        if name not in self._factories:
            known = ", ".join(self.names()) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; available: {known}")
