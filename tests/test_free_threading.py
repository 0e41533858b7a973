"""On a free-threaded interpreter, importing moka_py must not turn the GIL back on
(the module declares `gil_used = false`)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

CHECK = """
import sys
assert not sys._is_gil_enabled(), "the GIL is enabled before importing moka_py"
import moka_py
from moka_py import Moka
c = Moka(10)
c.set("k", 1)
assert c.get("k") == 1
# moka_py.redis and redis-py (pure Python) keep it off too.
import moka_py.redis
import redis.asyncio.cluster
import redis.cluster
print("gil enabled:", sys._is_gil_enabled())
"""


@pytest.mark.skipif(not FREE_THREADED, reason="needs a free-threaded (Py_GIL_DISABLED) build")
def test_gil_stays_disabled_after_import() -> None:
    # PYTHON_GIL=1 in the environment would force the GIL on: leave it out.
    env_free = {k: v for k, v in os.environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        env=env_free,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "gil enabled: False", proc.stdout + proc.stderr
    # Importing an extension that does not declare free-threading support warns.
    assert "RuntimeWarning" not in proc.stderr, proc.stderr
