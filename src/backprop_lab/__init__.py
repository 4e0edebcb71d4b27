"""backprop-lab: a NumPy MLP with a hand-written backward pass, and the sweeps that study it."""

from backprop_lab.env import QUIET_ENV, set_quiet_env

__version__ = "0.1.0"
__all__ = ["QUIET_ENV", "__version__"]

# Here, so that it runs before any module of the package (or a script importing one) imports
# MLflow or Ray: telemetry off, unless the user set the variable.
set_quiet_env()
