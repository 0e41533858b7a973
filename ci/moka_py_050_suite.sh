#!/usr/bin/env bash
# Runs the published test suite of moka-py 0.5.0 (the package this one replaces)
# against OUR moka_py. The suite is taken at run time from moka-py 0.5.0's sdist
# on PyPI (never copied into this tree), copied into a scratch directory next to
# its README.md (tests/test_readme_blocks.py runs that README's code blocks) and
# run there with pytest, so `import moka_py` finds only the wheel built from this
# tree; a conftest.py written by this script checks that before any test runs.
# tests/test_benches.py (which upstream's CI leaves out) runs too, each benchmark
# once (--benchmark-disable), as a check of the API; tests/test_wasm.py skips
# itself without pytest-pyodide.
#
#   bash ci/moka_py_050_suite.sh                 the GIL interpreter ($PY_GIL)
#   bash ci/moka_py_050_suite.sh ft              free-threaded 3.13t (ci/python-ft.sh)
#   bash ci/moka_py_050_suite.sh /path/to/python any other interpreter
# Arguments after the first go to pytest (e.g. -k expiry, -x). The scratch
# directory is removed at exit unless MOKA_SUITE_KEEP=1.
# Exits non-zero when any test fails (or none ran).
# shellcheck source=ci/env.sh
source "$(dirname "$0")/env.sh"

VERSION=0.5.0
# sha256 of moka_py-0.5.0.tar.gz as published on PyPI (files there never change).
SDIST_SHA256=e5e4fe102ec1e65c752efa4f341e42823de50c1034e27e31cc4b4242b131938c

which="${1:-gil}"
[ $# -gt 0 ] && shift
uv_flags=()
case "$which" in
    gil)
        python="$PY_GIL"
        name=moka-py-suite
        ;;
    ft)
        python="$(bash "$ROOT/ci/python-ft.sh")"
        name=moka-py-suite-ft
        uv_flags=(--only-binary :all:)
        ;;
    *)
        python="$(command -v "$which")" || { echo "no interpreter: $which" >&2; exit 2; }
        name="moka-py-suite-$("$python" -c 'import sys, sysconfig
print(sys.implementation.cache_tag + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""))')"
        ;;
esac

dev_venv
venv="$(new_venv "$name" "$python")"
# The versions upstream's dependency groups pin, from the lock (ci/lock/TAG/moka-py-0.5.0-suite.txt).
log "test dependencies: ci/lock/$(python_tag "$python")/moka-py-0.5.0-suite.txt"
sync_venv "$venv" moka-py-0.5.0-suite "${uv_flags[@]}"
install_wheel "$venv"

tmp="$(mktemp -d "${TMPDIR:-/tmp}/moka-py-${VERSION}-suite.XXXXXX")"
if [ "${MOKA_SUITE_KEEP:-}" = 1 ]; then
    log "keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi

# (--no-binary for moka-py alone: its build backend, which pip installs to read the sdist's
# metadata (maturin==1.14.1, pinned by moka-py's pyproject.toml), comes as a wheel;
# --no-binary :all: compiled maturin from source: 9 minutes on 2 cores when not cached.)
sdist="$(fetch_sdist "$tmp" moka-py "$VERSION")"
echo "$SDIST_SHA256  $sdist" | sha256sum -c --quiet -
mkdir "$tmp/sdist"
tar -xzf "$sdist" -C "$tmp/sdist"
src="$tmp/sdist/moka_py-$VERSION"
[ -f "$src/tests/test_moka.py" ] || { echo "no tests/ in $sdist" >&2; exit 1; }

# The scratch directory holds only the tests, the README they read and our own
# pytest config: not the sdist's py-src/moka_py, nor its pyproject.toml.
run="$tmp/run"
mkdir "$run"
cp -R "$src/tests" "$run/tests"
cp "$src/README.md" "$run/README.md"
# Upstream's [tool.pytest.ini_options], plus --benchmark-disable and a timeout.
cat >"$run/pytest.ini" <<'EOF'
[pytest]
addopts = --doctest-modules --doctest-continue-on-failure --benchmark-disable
doctest_optionflags = ELLIPSIS NORMALIZE_WHITESPACE
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
timeout = 300
EOF
# Fails the session unless moka_py is the wheel installed in this venv.
cat >"$run/conftest.py" <<'EOF'
import os
import sys
import sysconfig

import moka_py

_SITE = os.path.realpath(sysconfig.get_paths()["purelib"])
_FILE = os.path.realpath(moka_py.__file__)


def pytest_report_header(config):
    return f"moka_py under test: {_FILE} ({getattr(moka_py, 'VERSION', '?')}), {sys.version}"


def pytest_sessionstart(session):
    if not _FILE.startswith(_SITE + os.sep):
        raise SystemExit(f"moka_py comes from {_FILE}, not from {_SITE}")
EOF

log "moka-py $VERSION's tests on $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL")')"
(cd "$run" && env -u PYTHONPATH "$venv/bin/python" -m pytest -c "$run/pytest.ini" \
    --rootdir "$run" -p no:cacheprovider -v "$@" tests)
