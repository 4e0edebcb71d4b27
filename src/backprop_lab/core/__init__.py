"""The numerical core: NumPy only (never hydra, omegaconf, mlflow, pandas)."""
