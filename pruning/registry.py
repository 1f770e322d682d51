"""One registry type for every "look it up by name" table in PruneGym (models, datasets, rewards, ...).

Every registry rejects duplicate names and answers an unknown name with close matches and the full list, so
all of them behave, and fail, the same way::

    >>> from pruning.registry import Registry
    >>> colours = Registry("colour")
    >>> @colours.register("red")
    ... def _red() -> str:
    ...     return "#f00"
    >>> colours.get("red")()
    '#f00'
    >>> colours.get("rad")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'rad'. Did you mean red? Registered: red
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A name → object table with decorator registration and helpful lookup errors.

    Args:
        kind: What the entries are, for messages (``"model"``, ``"dataset"``, ``"reward"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T, *, replace: bool = False) -> T:
        """Register ``obj`` as ``name`` and return it.

        Raises:
            ValueError: ``name`` is taken and ``replace`` is false.
        """
        if name in self._items and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._items[name] = obj
        return obj

    def register(self, name: str | None = None, *, replace: bool = False) -> Callable[[T], T]:
        """Decorator form of :meth:`add`; ``name`` defaults to the object's ``__name__``."""

        def wrapper(obj: T) -> T:
            return self.add(name or getattr(obj, "__name__"), obj, replace=replace)  # noqa: B009

        return wrapper

    def get(self, name: str) -> T:
        """The entry registered as ``name``.

        Raises:
            ValueError: ``name`` is unknown; the message suggests close matches and lists every name.
        """
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.names())}") from None

    def copy(self) -> Registry[T]:
        """A new registry with the same entries (e.g. to register test entries without leaking them)."""
        new: Registry[T] = Registry(self.kind)
        new._items = dict(self._items)
        return new

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return sorted(self._items.items(), key=lambda kv: kv[0])

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
