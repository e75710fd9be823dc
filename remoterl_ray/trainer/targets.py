"""The "module:attr" name under which a simulator can import a callable.

Code never travels: a trainer's env class or creator reaches a simulator
only as such a name, which the simulator's allowlist then judges. One rule
for every integration (``gym.register`` entry points, RLlib creators).
"""

from __future__ import annotations

import sys

# The running script, as itself and as multiprocessing's children import it: simulators cannot import it.
_SCRIPTS = frozenset({"__main__", "__mp_main__"})


def importable_name(obj: object) -> str | None:
    """``"module:attr"`` if ``obj`` is that very attribute of an imported
    module other than ``__main__``, else None (lambdas, nested functions,
    methods, partials, names rebound since). A class a factory function made
    is named by a module-level binding of it. The simulator reads the
    module's namespace the same way (``vars``, no module ``__getattr__``), so
    a name that passes here resolves to the same object there."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module in _SCRIPTS:
        return None
    namespace = getattr(sys.modules.get(module), "__dict__", None)
    if qualname.isidentifier() and isinstance(namespace, dict) and namespace.get(qualname) is obj:
        return f"{module}:{qualname}"
    if isinstance(obj, type) and "<locals>" in qualname:
        return _exported_name(obj)
    return None


def _exported_name(cls: type) -> str | None:
    """Where a class made by a factory function (RLlib's ``MultiAgentCartPole =
    make_multi_agent("CartPole-v1")``) is bound at module level: the first such
    name among imported modules other than ``__main__``, modules of the package that
    made the class first, then by module name (so an unrelated module that imports
    the class does not decide)."""
    package = cls.__module__.partition(".")[0]

    def order(name: str) -> tuple[bool, str]:
        return (name != package and not name.startswith(package + "."), name)

    for module_name in sorted((name for name in list(sys.modules) if name not in _SCRIPTS), key=order):
        namespace = getattr(sys.modules.get(module_name), "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for attr, value in list(namespace.items()):
            if value is cls and attr.isidentifier():
                return f"{module_name}:{attr}"
    return None
