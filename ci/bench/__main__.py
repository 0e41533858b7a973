"""``python -m ci.bench``: the driver (see driver.py), as ci/bench.sh runs it."""

from .driver import main

main()
