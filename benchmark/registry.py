"""One registry style for formulations, backbones, datasets and report sections: a named dict filled by a decorator
(or a call), as in timm's `_registry.py`, with the closest-name error every unknown name gets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import BenchError, closest

T = TypeVar("T")


class Registry(Generic[T]):
    """`entry_points`: the group (e.g. `mesbench.formulations`) through which an installed package adds its own
    entries; they are loaded the first time a name is missing or the registry is listed. `adopt(name, obj)` registers
    what an entry point loads when importing it did not register anything itself."""

    def __init__(
        self, kind: str, entry_points: str | None = None, adopt: Callable[[str, Any], None] | None = None
    ) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self.group = entry_points
        self.adopt = adopt
        self.origins: dict[str, str] = {}  # name -> where it came from, for entries not of mesbench itself
        self._plugins_loaded = entry_points is None

    def load_plugins(self) -> None:
        """Import every entry point of the group once (only code the user installed: nothing from a run directory
        or a suite is ever unpickled or fetched)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group or ""):
            before = set(self._items)
            try:
                obj = ep.load()
            except Exception as exc:
                raise BenchError(
                    f"the {self.kind} plugin {ep.name!r} ({ep.value}, entry point group {self.group}) cannot be "
                    f"loaded ({type(exc).__name__}: {exc}). Fix or uninstall the package that declares it."
                ) from None
            if set(self._items) == before and self.adopt is not None:
                self.adopt(ep.name, obj)
            dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
            for added in set(self._items) - before:
                self.origins[added] = f"{dist} (entry point {ep.value})"

    def origin(self, name: str) -> str:
        return self.origins.get(name, "mesbench")

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
            self.load_plugins()
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
        if name not in self._items:
            self.load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(list(self._items))

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._items)

    def items(self) -> list[tuple[str, T]]:
        self.load_plugins()
        return list(self._items.items())

    def values(self) -> list[T]:
        self.load_plugins()
        return list(self._items.values())
