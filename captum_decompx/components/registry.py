"""The one registry type: entries by key, with the same verbs for every kind of entry.

Every extension point of the package (adapters, bias rules, approximations, norm kinds, linear
layouts, head steps, evaluation methods) is a :class:`Registry`. Its public ``register_*`` function
checks the entry and calls :meth:`Registry.register`; ``unregister_*`` removes one; the look-up
(``bias_rule(name)``, ``approximation(name)``, ...) calls :meth:`Registry.get`, which names the
registered keys when the key is unknown. A registry also reads like a read-only mapping (``in``,
iteration in registration order, ``registry[key]``, ``keys()``, ``items()``).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, Mapping, Optional, Sequence, TypeVar, Union, overload

T = TypeVar("T")
#: A registry key: a name, or a class (the head steps are registered by their class).
Key = Union[str, type]

#: Every registry created, in creation order (see :func:`every_registry`).
_EVERY_REGISTRY: list["Registry[Any]"] = []


def _shown(key: Key) -> str:
    return key.__name__ if isinstance(key, type) else repr(key)


class Registry(Generic[T]):
    """Entries registered by key (a name, or a class for the head steps), in registration order.

    Args:
        what: what an entry is, for error messages (``"bias rule"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[Key, T] = {}
        _EVERY_REGISTRY.append(self)

    def register(self, key: Key, entry: T, *, overwrite: bool = False) -> None:
        """Register ``entry`` under ``key``.

        Args:
            overwrite: replace an entry registered before under ``key`` (it keeps its place in the
                registration order); without it, a ValueError.
        """
        if key is None or key == "":
            raise ValueError(f"A {self.what} needs a non-empty key, got {key!r}.")
        if key in self._entries and not overwrite:
            raise ValueError(f"Registered already: the {self.what} {_shown(key)}; pass overwrite=True to replace it.")
        self._entries[key] = entry

    def unregister(self, key: Key) -> None:
        """Remove the entry of ``key`` (a ValueError when there is none)."""
        if key not in self._entries:
            raise ValueError(f"No {self.what} {_shown(key)} is registered.")
        del self._entries[key]

    def get(self, key: Key) -> T:
        """The entry of ``key``; a ValueError naming the registered keys when there is none."""
        if key in self._entries:
            return self._entries[key]
        registered = ", ".join(_shown(name) for name in self._entries)
        raise ValueError(f"Unknown {self.what} {_shown(key)}; registered: {registered}.")

    def find(self, key: Key) -> Optional[T]:
        """The entry of ``key``, or None."""
        return self._entries.get(key)

    def names(self) -> tuple[Key, ...]:
        """The keys, in registration order."""
        return tuple(self._entries)

    def keys(self) -> tuple[Key, ...]:
        return self.names()

    def items(self) -> list[tuple[Key, T]]:
        """``(key, entry)`` pairs, in registration order."""
        return list(self._entries.items())

    def snapshot(self) -> dict[Key, T]:
        """A copy of the entries, for :meth:`restore`."""
        return dict(self._entries)

    def restore(self, snapshot: Mapping[Key, T]) -> None:
        """Put back the entries of a :meth:`snapshot` (registrations made since are undone)."""
        self._entries.clear()
        self._entries.update(snapshot)

    def __getitem__(self, key: Key) -> T:
        return self._entries[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(_shown(key) for key in self._entries)})"


def every_registry() -> tuple[Registry[Any], ...]:
    """Every registry of the package (and any made since), e.g. to snapshot and restore them all."""
    return tuple(_EVERY_REGISTRY)


class Names(Sequence[str]):
    """A live, read-only view of a registry's names (optionally filtered), usable as a tuple of choices."""

    def __init__(self, registry: Registry, keep: Callable[[Any], bool] = lambda entry: True) -> None:
        self._registry = registry
        self._keep = keep

    def _current(self) -> tuple[str, ...]:
        return tuple(str(name) for name, entry in self._registry.items() if self._keep(entry))

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index):
        return self._current()[index]

    def __len__(self) -> int:
        return len(self._current())

    def __iter__(self) -> Iterator[str]:
        return iter(self._current())

    def __contains__(self, name: object) -> bool:
        return name in self._current()

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, Names)) else other)

    def __hash__(self) -> int:
        return hash(self._current())

    def __repr__(self) -> str:
        return repr(self._current())
