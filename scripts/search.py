"""make search: an Optuna study over conf/search/<space>.yaml (a thin entry point; docs/search.md).

    python scripts/search.py SPACE=default TRIALS=40 JOBS=1 [overrides...]
"""

import os
import sys
from pathlib import Path

for _k, _v in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true")):
    os.environ.setdefault(_k, _v)  # telemetry off before anything imports mlflow

from backprop_lab.search.owner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], str(Path(__file__).resolve().parent.parent / "conf")))
