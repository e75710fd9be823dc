"""Equality of results in value and in type, recursively: what "remote equals
local" means in the tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def _name(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def assert_identical(
    expected: Any, got: Any, path: str = "", type_only: Callable[[str], bool] = lambda _: False
) -> None:
    """Assert ``got`` equals the local ``expected`` in value and in type, recursively.

    Types are compared exactly (``int`` is not ``numpy.int64``, ``bool`` is not
    ``numpy.bool_``) because code downstream of an env branches on them; the
    failure names the path, e.g. ``step 12[4]['prob']``. ``type_only(path)``
    marks values that may differ between two local runs too (wall-clock times).
    """
    where = path or "<result>"
    assert type(got) is type(expected), (
        f"{where}: type {_name(got)} != local {_name(expected)} (remote {got!r:.120}, local {expected!r:.120})"
    )
    if type_only(path):
        return
    if isinstance(expected, np.ndarray):
        assert got.dtype == expected.dtype, f"{where}: dtype {got.dtype} != local {expected.dtype}"
        assert got.shape == expected.shape, f"{where}: shape {got.shape} != local {expected.shape}"
        if expected.dtype == object:
            for index in np.ndindex(expected.shape):
                label = ",".join(map(str, index))
                assert_identical(expected[index], got[index], f"{path}[{label}]", type_only)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=f"{where}: values differ from local", strict=True)
    elif isinstance(expected, dict):
        missing = [key for key in expected if key not in got]
        extra = [key for key in got if key not in expected]
        assert not missing and not extra, f"{where}: keys missing {missing}, extra {extra} (local: {list(expected)})"
        for key in expected:
            assert_identical(expected[key], got[key], f"{path}[{key!r}]", type_only)
    elif isinstance(expected, (list, tuple)):
        assert len(got) == len(expected), f"{where}: length {len(got)} != local {len(expected)}"
        for index, (e, g) in enumerate(zip(expected, got)):
            assert_identical(e, g, f"{path}[{index}]", type_only)
    elif isinstance(expected, (float, np.floating)) and np.isnan(expected):
        assert np.isnan(got), f"{where}: {got!r} != local nan"
    else:
        assert got == expected, f"{where}: {got!r:.200} != local {expected!r:.200}"
