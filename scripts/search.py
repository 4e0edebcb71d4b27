"""make search: an Optuna study over conf/search/<space>.yaml (a thin entry point; docs/search.md).

    python scripts/search.py SPACE=default TRIALS=40 JOBS=1 [overrides...]
"""

import sys
from pathlib import Path

from backprop_lab.search.owner import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], str(Path(__file__).resolve().parent.parent / "conf")))
