"""Shared test set-up: QWED's banners off, and the fixtures every test module may use."""

from __future__ import annotations

import os

os.environ.setdefault("QWED_QUIET", "1")

# Live Redis/PostgreSQL fixtures (started by `make services`).
pytest_plugins = ["tests.services"]
