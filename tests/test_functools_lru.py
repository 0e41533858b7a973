"""CPython's own ``test.test_functools.TestLRU``, run against ``moka_py.cached``
with ``policy="lru"`` (through tests/functools_lru_adapter.py), from the
running interpreter's ``test`` package.

Every test of TestLRU must pass, except the ones listed in ``DIFFERENCES``,
each a deliberate difference that README's "## `@cached`" section documents;
those must fail (so that the list cannot go stale)."""

from __future__ import annotations

import sys
import unittest
from typing import Any

import functools_lru_adapter as adapter
import pytest

try:
    from test import test_functools
except ImportError as error:  # an interpreter installed without its test package
    test_functools = None
    MISSING = f"CPython's test package is not installed for {sys.executable} ({error})"

# Not run 4 at once by pytest-run-parallel (ci/test.sh's last pass on 3.13t):
# TestLRU changes process-wide state (the recursion limit in
# test_lru_recursion, the switch interval in the threaded tests) and expects
# its own gc.collect() to free what it dropped (test_lru_cache_weakrefable),
# which a collection already running in another thread does not do.
pytestmark = pytest.mark.thread_unsafe

# The tests of TestLRU that fail by design, and why.
DIFFERENCES = {
    "test_lru_cache_parameters": "cache_parameters() also reports moka_py's options "
    "(ttl, tti, wait_concurrent, policy, key, cache_if)",
    "test_kwargs_order": "keyword order does not create distinct entries: "
    "f(a=1, b=2) and f(b=2, a=1) are one call",
}
if sys.implementation.name == "pypy":
    # The test drops a cached function whose cache refers back to it, a cycle
    # through C extension objects that PyPy never collects (pypy/pypy#3848).
    DIFFERENCES["test_lru_cache_weakrefable"] = "PyPy: no cycle through moka_py is collected"


# Module-level, as in CPython's test module: TestLRU pickles it by name.
@adapter.lru_cache()
def cached_func(x: int, y: int) -> int:
    return 3 * x + y


if test_functools is not None:

    class MokaLRU(test_functools.TestLRU, unittest.TestCase):  # type: ignore[misc,name-defined]
        __test__ = False  # run by the tests below, one pytest test per test method
        module = adapter
        cached_func = (cached_func,)

        @adapter.lru_cache()
        def cached_meth(self, x: int, y: int) -> int:
            return 3 * x + y

        @staticmethod
        @adapter.lru_cache()
        def cached_staticmeth(x: int, y: int) -> int:
            return 3 * x + y

    NAMES = list(unittest.TestLoader().getTestCaseNames(MokaLRU))
else:
    NAMES = []


def _run(name: str) -> unittest.TestResult:
    result = unittest.TestResult()
    MokaLRU(name).run(result)
    return result


def _problems(result: unittest.TestResult) -> list[Any]:
    return [text for _, text in result.failures + result.errors]


def test_cpython_testlru_is_available() -> None:
    if test_functools is None:
        pytest.skip(MISSING)
    # 26 on 3.10; 3.11 added test_lru_cache_typed_is_not_recursive.
    assert len(NAMES) >= (26 if sys.version_info < (3, 11) else 27)
    assert set(DIFFERENCES) <= set(NAMES), set(DIFFERENCES) - set(NAMES)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in DIFFERENCES])
def test_cpython_testlru_passes(name: str) -> None:
    result = _run(name)
    assert result.testsRun == 1
    assert not _problems(result), "\n".join(_problems(result))
    assert not result.skipped, result.skipped


@pytest.mark.parametrize("name", [n for n in NAMES if n in DIFFERENCES])
def test_cpython_testlru_documented_difference(name: str) -> None:
    result = _run(name)
    assert result.testsRun == 1
    assert _problems(result), f"{name} passes now: remove it from DIFFERENCES and the README"
