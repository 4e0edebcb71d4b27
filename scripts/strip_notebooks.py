"""Keep notebooks stored without outputs (`make lint` runs this with --check).

    python scripts/strip_notebooks.py [--check] [NOTEBOOK ...]   (default: notebooks/*.ipynb)

--check lists every notebook stored with outputs or execution counts and exits 1 (the file
is left alone); without it those notebooks are stripped in place. Cell tags (`parameters`)
and sources are kept; a notebook that is already clean is not rewritten.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
# Per-cell metadata that records a past execution, not the notebook's content.
VOLATILE_CELL_METADATA = ("execution", "collapsed", "scrolled", "ExecuteTime")


def dirty_cells(nb) -> int:
    """Number of cells carrying outputs, an execution count or execution metadata."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" and (
        cell.get("outputs") or cell.get("execution_count") is not None
        or any(k in cell.metadata for k in VOLATILE_CELL_METADATA)))


def strip(nb) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        for key in VOLATILE_CELL_METADATA:
            cell.metadata.pop(key, None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 if any has outputs")
    parser.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted((REPO / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except (OSError, ValueError) as error:  # unreadable JSON is as bad as stored outputs
            print(f"strip_notebooks: cannot read {path}: {error}", file=sys.stderr)
            return 2
        n = dirty_cells(nb)
        if not n:
            continue
        dirty.append(path)
        if args.check:
            print(f"{path}: {n} cell(s) stored with outputs")
        else:
            strip(nb)
            nbformat.write(nb, path)
            print(f"stripped {path} ({n} cell(s))")
    if args.check and dirty:
        print(f"{len(dirty)} notebook(s) stored with outputs: run "
              "`python scripts/strip_notebooks.py` (or `uv run python scripts/strip_notebooks.py`)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
