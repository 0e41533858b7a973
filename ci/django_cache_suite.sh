#!/usr/bin/env bash
# Runs Django's own cache tests, the BaseCacheTests of tests/cache/tests.py, against
# moka_py.django.MokaCache and moka_py.django.TieredMokaCache (on a real redis-server
# that this script starts on a free loopback port, through tests/redis_servers.py).
# The tests are taken at run time from the source distribution of the Django release
# that the venv holds (the test lock's, ci/lock/TAG/test.txt), whose sha256 must be one
# of the hashes that lock pins for it; nothing of Django's is copied into this tree.
# They run with Django's own runner (tests/runtests.py, settings test_sqlite) from a
# scratch copy of the sdist's tests/ directory, beside the two test classes below.
#
#   bash ci/django_cache_suite.sh                 the GIL interpreter ($PY_GIL)
#   bash ci/django_cache_suite.sh ft              free-threaded 3.13t (ci/python-ft.sh), with
#                                                 the Django of its lock (6.1.3 today)
# Arguments after the first go to runtests.py (e.g. -k cull). The scratch directory is
# removed at exit unless MOKA_SUITE_KEEP=1. Exits non-zero when any test fails.
#
# Exclusions (the README's Django section says why): TieredMokaCache is configured as
# Django configures its own RedisCache in these tests, without the "cull" and
# "zero_cull" caches (Django's redis_excluded_caches): Redis bounds what it keeps by its
# maxmemory policy, not by MAX_ENTRIES, so test_cull, test_zero_cull and
# test_cull_delete_when_store_empty skip themselves ("Culling isn't implemented."), as
# they do for RedisCache and memcached. MokaCache runs every test.
# shellcheck source=ci/env.sh
source "$(dirname "$0")/env.sh"

which="${1:-gil}"
[ $# -gt 0 ] && shift
uv_flags=()
case "$which" in
    gil)
        python="$PY_GIL"
        name=django-cache-suite
        ;;
    ft)
        python="$(bash "$ROOT/ci/python-ft.sh")"
        name=django-cache-suite-ft
        uv_flags=(--only-binary :all:)
        ;;
    *) echo "usage: $0 [gil|ft] [runtests.py arguments...]" >&2; exit 2 ;;
esac

dev_venv
need_redis
venv="$(new_venv "$name" "$python")"
tag="$(python_tag "$python")"
log "test dependencies: ci/lock/$tag/test.txt"
sync_venv "$venv" test "${uv_flags[@]}"
install_wheel "$venv"

version="$("$venv/bin/python" -c 'import django; print(django.__version__)')"
# The sha256 of every file of this release that the lock admits (wheel and sdist).
mapfile -t hashes < <(awk -v want="django==$version" '
    $1 == want { on = 1; next }
    on && /--hash=sha256:/ { sub(/.*--hash=sha256:/, ""); sub(/[ \\].*/, ""); print; next }
    on { exit }' "$ROOT/ci/lock/$tag/test.txt")
[ "${#hashes[@]}" -gt 0 ] || { echo "ci/lock/$tag/test.txt does not pin django==$version" >&2; exit 1; }

tmp="$(mktemp -d "${TMPDIR:-/tmp}/django-cache-suite.XXXXXX")"
if [ "${MOKA_SUITE_KEEP:-}" = 1 ]; then
    log "keeping $tmp"
else
    trap 'rm -rf "$tmp"' EXIT
fi

# (--python-version is the venv's: its lock may hold a Django that needs a newer Python than
# uv's own.)
sdist="$(fetch_sdist "$tmp" django "$version" --python-version "${tag%t}")"
sha="$(sha256sum "$sdist" | cut -d' ' -f1)"
printf '%s\n' "${hashes[@]}" | grep -qx "$sha" \
    || { echo "$sdist: sha256 $sha is not one that ci/lock/$tag/test.txt pins" >&2; exit 1; }
tar -xzf "$sdist" -C "$tmp"
tests="$tmp/django-$version/tests"
[ -f "$tests/cache/tests.py" ] && [ -f "$tests/runtests.py" ] \
    || { echo "no tests/cache/tests.py or tests/runtests.py in $sdist" >&2; exit 1; }
# Only tests/ is kept: `import django` must find the installed release, not the sdist's.
mv "$tests" "$tmp/tests"
rm -rf "$tmp/django-$version"

# The two test classes: Django's BaseCacheTests, configured as its LocMemCacheTests and
# RedisCacheTests are (caches_setting_for_tests, redis_excluded_caches).
cat >"$tmp/tests/cache/test_moka_py.py" <<'EOF'
import os

import moka_py.django
from django.test import TestCase, override_settings

from .tests import BaseCacheTests, caches_setting_for_tests, redis_excluded_caches

assert os.path.realpath(moka_py.django.__file__).startswith(os.environ["MOKA_PY_SITE"]), (
    moka_py.django.__file__
)


@override_settings(CACHES=caches_setting_for_tests(BACKEND="moka_py.django.MokaCache"))
class MokaCacheTests(BaseCacheTests, TestCase):
    pass


@override_settings(
    CACHES=caches_setting_for_tests(
        BACKEND="moka_py.django.TieredMokaCache",
        LOCATION=os.environ["MOKA_PY_REDIS_URL"],
        exclude=redis_excluded_caches,
    )
)
class TieredMokaCacheTests(BaseCacheTests, TestCase):
    pass
EOF

# A redis-server of tests/redis_servers.py (a free port, ended with this process), then
# Django's runner in a child.
log "Django $version's BaseCacheTests on $("$venv/bin/python" -c 'import sys; print(sys.version.split()[0], "free-threaded" if not getattr(sys, "_is_gil_enabled", lambda: True)() else "GIL")')"
cd "$tmp/tests"
env -u PYTHONPATH MOKA_PY_TESTS="$ROOT/tests" "$venv/bin/python" - "$@" <<'EOF'
import os
import subprocess
import sys
import sysconfig

sys.path.insert(0, os.environ["MOKA_PY_TESTS"])
from redis_servers import RedisServer  # noqa: E402

with RedisServer() as server:
    env = {
        **os.environ,
        "MOKA_PY_REDIS_URL": server.url,
        "MOKA_PY_SITE": os.path.realpath(sysconfig.get_paths()["purelib"]),
    }
    argv = ["runtests.py", "cache.test_moka_py", "--settings=test_sqlite", "--parallel=1"]
    done = subprocess.run([sys.executable, *argv, "-v", "2", *sys.argv[1:]], env=env, timeout=900)
sys.exit(done.returncode)
EOF
