"""Strip outputs from the tutorial notebooks, so git holds only what people write.

    python scripts/strip_notebooks.py              # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py --check      # exit 1 if any notebook has outputs
    python scripts/strip_notebooks.py PATH ...     # particular notebooks or folders

Clears every code cell's outputs and execution count and the per-cell metadata Jupyter adds
while running (execution timings, collapsed/scrolled state). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
# Cell metadata that records a run or a view, not what the author wrote.
_RUN_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def strip(notebook: dict[str, Any]) -> dict[str, Any]:
    """The notebook without outputs, execution counts or run metadata."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        metadata = cell.get("metadata", {})
        for key in _RUN_METADATA:
            metadata.pop(key, None)
    notebook.get("metadata", {}).pop("widgets", None)
    return notebook


def _paths(args: list[str]) -> list[Path]:
    targets = [Path(a) for a in args] or [NOTEBOOKS]
    found: list[Path] = []
    for target in targets:
        found.extend(sorted(target.glob("*.ipynb")) if target.is_dir() else [target])
    return found


def _dump(notebook: dict[str, Any]) -> str:
    # The layout Jupyter itself writes, so saving from Jupyter and stripping agree.
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/)")
    parser.add_argument("--check", action="store_true", help="report, do not change")
    args = parser.parse_args(argv)
    dirty: list[Path] = []
    for path in _paths(args.paths):
        text = path.read_text(encoding="utf-8")
        stripped = _dump(strip(json.loads(text)))
        if stripped != text:
            dirty.append(path)
            if not args.check:
                path.write_text(stripped, encoding="utf-8")
    verb = "not stripped" if args.check else "stripped"
    for path in dirty:
        print(f"{verb}: {path}")
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
