"""`python -m qwed_guard.audit verify|show|stats PATH`."""

from __future__ import annotations

import sys

from qwed_guard.audit.cli import main

if __name__ == "__main__":
    sys.exit(main(["audit", *sys.argv[1:]]))
