"""Swap attributes on modules and classes, and put the exact originals back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

_MISSING = object()


def _object_new(cls: type, *args: Any, **kwargs: Any) -> Any:
    return object.__new__(cls)


class Patcher:
    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def replace(self, modules: Iterable[ModuleType], name: str, original: Any, replacement: Callable[..., Any]) -> None:
        """Point ``module.name`` at ``replacement`` wherever it is ``original`` now."""
        for module in modules:
            if getattr(module, name, None) is original:
                self.set(module, name, replacement)

    def set(self, owner: Any, name: str, value: Any) -> None:
        """Set ``owner.name``; restore puts back the owner's own attribute, or
        removes it if the owner only inherited one (a class's ``__new__``)."""
        saved = vars(owner).get(name, _MISSING)

        def undo() -> None:
            if saved is _MISSING and name == "__new__":
                # CPython keeps calling a deleted __new__'s slot with the
                # constructor's arguments, which object.__new__ refuses.
                setattr(owner, name, _object_new)
            elif saved is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, saved)

        setattr(owner, name, value)
        self._undo.append(undo)

    def on_restore(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()

    @property
    def active(self) -> bool:
        return bool(self._undo)
