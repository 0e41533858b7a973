"""Instructions per operation under callgrind, by component (``python -m
ci.profile``, run by ci/profile.sh, which puts the repository on ``PYTHONPATH``).

driver.py runs each operation under valgrind and charges every instruction to
the code it was compiled from; ops.py is the workload it runs.

The import name is ``ci.profile``, never a top-level ``profile``, which would
shadow the standard library's ``profile`` module (that ``cProfile`` imports).
"""
