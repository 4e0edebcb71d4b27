"""`make search`: an Optuna study over a Hydra-composed search space, each trial's seeds MLflow runs.

space.py (the space and the study's settings, one-line errors), study.py (plan, storage, locks,
resume), trials.py (a worker: ask, train each seed as a child run, report to the pruner, tell),
owner.py (`main`: check, open, run the workers, write the parent's summary).
"""
