"""The package version, in one place (pyproject.toml reads it; `qwed_guard.__version__` is it)."""

__version__ = "0.1.0.dev0"
