"""Shared test set-up: QWED's banners off, and the fixtures every test module may use."""

from __future__ import annotations

import os

os.environ.setdefault("QWED_QUIET", "1")

# Private Redis/PostgreSQL servers for the test session (started by the fixtures themselves).
pytest_plugins = ["tests.services"]
