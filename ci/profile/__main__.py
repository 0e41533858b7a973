"""``python -m ci.profile``: the driver (see driver.py), as ci/profile.sh runs it."""

from .driver import main

main()
