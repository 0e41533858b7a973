"""The core package, in a real venv that has none of the extras (no
opentelemetry, prometheus_client, redis or Django): it imports and works, and
an exporter's module says which extra to install."""

from __future__ import annotations

import json
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

import moka_py

pytestmark = pytest.mark.thread_unsafe  # makes a venv

SCRIPT = r"""
import json, sys
from moka_py import Moka, cached

cache = Moka(10, stats=True)
cache["a"] = 1
assert cache.get("a") == 1 and cache.get_with("b", lambda: 2) == 2

@cached(10, stats=True)
def square(x):
    return x * x

assert square(3) == 9 and square(3) == 9
errors = {}
for name in ("moka_py.otel", "moka_py.prometheus"):
    try:
        __import__(name)
    except ModuleNotFoundError as err:
        errors[name] = str(err)
print(json.dumps({
    "stats": [cache.stats().hits, square.cache.stats(cumulative=True).hits],
    "errors": errors,
    "absent": [m for m in ("opentelemetry", "prometheus_client", "redis", "django")
               if m not in sys.modules],
}))
"""


def test_the_core_works_in_a_venv_without_the_extras(tmp_path: Path) -> None:
    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    site = Path(out.stdout.strip())
    # The built package only (its compiled module included), as pip would install it.
    shutil.copytree(Path(moka_py.__file__).parent, site / "moka_py")
    run = subprocess.run(
        [str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["stats"] == [1, 1]
    assert result["absent"] == ["opentelemetry", "prometheus_client", "redis", "django"]
    assert 'pip install "moka-py[otel]"' in result["errors"]["moka_py.otel"]
    assert 'pip install "moka-py[prometheus]"' in result["errors"]["moka_py.prometheus"]
