"""The smoke test of a built wheel (ci/wheels.sh, ci/wheels-aarch64.sh).

Run by the interpreter the wheel is installed for, from outside the source tree, with the
versions that the classifiers must name ("3.10,3.11,...": TARGETS, 3.13t under 3.13) as
its argument.
"""

import sys
from importlib.metadata import metadata

from moka_py import Moka, cached

free_threaded = "t" in getattr(sys, "abiflags", "")

c: Moka[str, int] = Moka(10)
c.set("k", 1)
assert c.get("k") == 1 and c.get("absent") is None

calls: list[int] = []


@cached(maxsize=8)
def square(x: int) -> int:
    calls.append(x)
    return x * x


assert square(3) == 9 and square(3) == 9 and calls == [3]

classifiers = metadata("moka-py").get_all("Classifier") or []
versions = {
    c.rsplit(" :: ", 1)[1]
    for c in classifiers
    if c.startswith("Programming Language :: Python :: 3.")
}
assert f"{sys.version_info[0]}.{sys.version_info[1]}" in versions, versions
assert versions == set(sys.argv[1].split(",")), (versions, sys.argv[1])
implementation = "PyPy" if sys.implementation.name == "pypy" else "CPython"
assert f"Programming Language :: Python :: Implementation :: {implementation}" in classifiers
if free_threaded:
    assert not sys._is_gil_enabled(), "importing moka_py enabled the GIL"
print(implementation, sys.version.split()[0], "free-threaded" if free_threaded else "GIL", "ok")
