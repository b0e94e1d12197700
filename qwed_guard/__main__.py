"""`python -m qwed_guard`: the `qwed-guard` command."""

import sys

from qwed_guard.cli import main

if __name__ == "__main__":
    sys.exit(main())
