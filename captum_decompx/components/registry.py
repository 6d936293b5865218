"""A small name -> object registry whose names can be listed and checked like a tuple."""

from __future__ import annotations

from typing import Generic, Iterator, Sequence, TypeVar, overload

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects registered by name, e.g. the bias rules or the activation approximations.

    Args:
        what: what the objects are, for error messages (``"bias rule"``).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, overwrite: bool = False) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.what} needs a non-empty string name, got {name!r}.")
        if name in self._entries and not overwrite:
            raise ValueError(f"A {self.what} named {name!r} is registered already; pass overwrite=True to replace it.")
        self._entries[name] = entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a ValueError when it is not registered)."""
        if name not in self._entries:
            raise ValueError(f"No {self.what} named {name!r} is registered.")
        del self._entries[name]

    def get(self, name: str) -> T:
        entry = self._entries.get(name)
        if entry is None:
            raise ValueError(f"Unknown {self.what} {name!r}; valid: {', '.join(self._entries)}.")
        return entry

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())


class Names(Sequence[str]):
    """A live, read-only view of a registry's names (optionally filtered), usable as a tuple of choices."""

    def __init__(self, registry: Registry, keep=lambda entry: True) -> None:
        self._registry = registry
        self._keep = keep

    def _current(self) -> tuple[str, ...]:
        return tuple(name for name, entry in self._registry.items() if self._keep(entry))

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
