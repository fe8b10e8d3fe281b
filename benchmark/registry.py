"""One registry style for formulations, backbones and datasets: a named dict filled by a decorator (or a
call), as in timm's `_registry.py`, with the closest-name error every unknown name gets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from .errors import BenchError, closest

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None) -> Any:
        """`@REG.register()` on a class with `.name`, `@REG.register("name")` on anything, or
        `REG.register("name", obj)`."""

        def add(item: T) -> T:
            key: str = name or item.name  # type: ignore[attr-defined]
            self._items[key] = item
            return item

        return add(obj) if obj is not None else add

    def lookup(self, name: str, extra_names: list[str] | None = None, hint: str = "") -> T:
        if name not in self._items:
            valid = list(self._items) + list(extra_names or [])
            raise BenchError(f"Unknown {self.kind} {name!r}: {closest(name, valid)}.{hint}")
        return self._items[name]

    def pop(self, name: str) -> T:
        return self._items.pop(name)

    # dict protocol, so tests can register a toy entry with pytest's monkeypatch.setitem
    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._items.get(name, default)

    def __setitem__(self, name: str, item: T) -> None:
        self._items[name] = item

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def values(self) -> list[T]:
        return list(self._items.values())
