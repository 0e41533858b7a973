"""Every Python code block of README.md runs as written."""

import contextlib
import importlib.util
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize(
    "code",
    [
        # A block that configures Django's settings (once per process) runs alone
        # under pytest-run-parallel.
        # So does a block of moka_py.redis (it runs against its own server).
        pytest.param(code, marks=pytest.mark.thread_unsafe)
        if "settings.configure(" in code or "moka_py.redis" in code or "TieredMokaCache" in code
        else code
        for code in BLOCKS
    ],
    ids=[f"block{i}" for i in range(len(BLOCKS))],
)
def test_readme_block(
    code: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "moka_py.redis" in code or "TieredMokaCache" in code:
        # The examples read REDIS_URL (else localhost:6379): a real server of the test's.
        server = request.getfixturevalue("redis_db")
        monkeypatch.setenv("REDIS_URL", server.url)
        # ...and their signing key from the environment, as a deployment would.
        monkeypatch.setenv("CACHE_SIGNING_KEY", secrets.token_hex(32))
        monkeypatch.setenv("DJANGO_SECRET_KEY", secrets.token_hex(32))
    if "settings.configure(" in code:
        with django_unconfigured():
            exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    else:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})


@contextlib.contextmanager
def django_unconfigured() -> Iterator[None]:
    """Each block that configures Django does so from scratch (``settings.configure``
    works once per process); the settings, the cache handler and the tiers of
    TieredMokaCache are put back (closed) after it."""
    import django.conf
    from asgiref.local import Local
    from django.core.cache import caches
    from django.utils.functional import empty

    import moka_py._django_tier as django_tier

    def reset_caches() -> None:
        caches.__dict__.pop("settings", None)
        caches._settings = None  # type: ignore[attr-defined]
        caches._connections = Local()  # type: ignore[attr-defined]

    saved = django.conf.settings._wrapped
    django.conf.settings._wrapped = empty
    reset_caches()
    try:
        yield
    finally:
        django.conf.settings._wrapped = saved
        reset_caches()
        django_tier.close_all()


def test_readme_results_are_the_committed_run() -> None:
    """The README's benchmark tables and charts are ci/results/, as written by
    ``bash ci/bench.sh --out ci/results`` and ``bash ci/profile.sh --out ci/results``
    (``python ci/readme_results.py`` copies them in)."""
    spec = importlib.util.spec_from_file_location(
        "readme_results", README.parent / "ci" / "readme_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = README.read_text(encoding="utf-8")
    assert module.current(readme) == module.block()
    for chart in re.findall(r"!\[[^\]]*\]\((ci/results/[^)]+)\)", readme):
        assert (README.parent / chart).is_file(), chart
