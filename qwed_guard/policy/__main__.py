"""`python -m qwed_guard.policy check FILE`: the same as `qwed-guard policy check FILE`."""

from __future__ import annotations

import sys

from qwed_guard.policy.cli import main

sys.exit(main(["policy", *sys.argv[1:]]))
