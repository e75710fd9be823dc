"""Run a patch when a module is imported: now if it already is, else right
after its first import. Integrations (SB3, RLlib) are patched this way so
``init`` never pays for importing frameworks the program does not use."""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from .patching import Patcher

log = logging.getLogger("remoterl.trainer")


class _AfterImport(importlib.abc.MetaPathFinder):
    def __init__(self, name: str, callback: Callable[[ModuleType], None]) -> None:
        self.name = name
        self.callback = callback
        self._finding = False

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module
        finder = self

        def exec_then_patch(module: ModuleType) -> None:
            exec_module(module)
            finder.remove()
            _run(finder.callback, module)

        spec.loader.exec_module = exec_then_patch  # type: ignore[method-assign]
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def _run(callback: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        callback(module)
    except Exception:  # a failed integration must not break the user's import
        log.exception("remoterl: could not patch %s", module.__name__)


def when_imported(name: str, callback: Callable[[ModuleType], None], patcher: Patcher) -> None:
    """Call ``callback(module)`` once ``name`` is imported; undone by ``patcher.restore()``."""
    module = sys.modules.get(name)
    if module is not None:
        _run(callback, module)
        return
    hook = _AfterImport(name, callback)
    sys.meta_path.insert(0, hook)
    patcher.on_restore(hook.remove)
