"""The numerical core imports neither Hydra/OmegaConf nor MLflow nor pandas (docs/architecture.md)."""

import subprocess
import sys

CORE = ["rng", "layers", "losses", "initializers", "mlp", "optim", "data", "train", "gradcheck", "plots",
        "render"]
FORBIDDEN = ["hydra", "omegaconf", "mlflow", "pandas"]


def test_core_modules_import_no_experiment_layer_packages():
    code = (
        "import sys\n"
        + "".join(f"import backprop_lab.{m}\n" for m in CORE)
        + f"print(sorted(p for p in {FORBIDDEN!r} if p in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"core pulled in: {out.stdout.strip()}"
