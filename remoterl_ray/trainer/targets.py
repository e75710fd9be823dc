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
    methods, partials, names rebound since). The simulator reads the
    module's namespace the same way (``vars``, no module ``__getattr__``), so
    a name that passes here resolves to the same object there."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    if module in _SCRIPTS or not qualname.isidentifier():
        return None
    namespace = getattr(sys.modules.get(module), "__dict__", None)
    if not isinstance(namespace, dict) or namespace.get(qualname) is not obj:
        return None
    return f"{module}:{qualname}"
