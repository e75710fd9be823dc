"""Swap functions on modules and put the exact originals back."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any


class Patcher:
    def __init__(self) -> None:
        self._saved: list[tuple[ModuleType, str, Any]] = []

    def replace(self, modules: Iterable[ModuleType], name: str, original: Any, replacement: Callable[..., Any]) -> None:
        """Point ``module.name`` at ``replacement`` wherever it is ``original`` now."""
        for module in modules:
            if getattr(module, name, None) is original:
                self._saved.append((module, name, original))
                setattr(module, name, replacement)

    def restore(self) -> None:
        for module, name, original in reversed(self._saved):
            setattr(module, name, original)
        self._saved.clear()

    @property
    def active(self) -> bool:
        return bool(self._saved)
