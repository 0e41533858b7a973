"""The benchmark suite: moka_py against its peers (``python -m ci.bench``, run by
ci/bench.sh, which puts the repository on ``PYTHONPATH``).

driver.py runs the case families in worker processes and writes the report;
impls.py wraps each implementation behind one interface; latency.py,
scaling.py, hit_ratio.py and memory.py are the case families; report.py
writes the Markdown tables and the charts.
"""
