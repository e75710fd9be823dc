"""``import remoterl`` works as an alias of :mod:`remoterl_ray`."""

from remoterl_ray import *  # noqa: F401,F403
from remoterl_ray import __all__, __version__  # noqa: F401
