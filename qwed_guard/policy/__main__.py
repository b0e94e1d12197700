"""`python -m qwed_guard.policy check FILE`: the same as `qwed-guard policy check FILE`."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # `python -m` puts the current directory first on sys.path: a policy file checked there
    # must not be able to import a module planted beside it.
    _here = os.path.realpath(os.getcwd())
    sys.path[:] = [p for p in sys.path if p and os.path.realpath(p) != _here]

    from qwed_guard.policy.cli import main

    sys.exit(main(["policy", *sys.argv[1:]]))
