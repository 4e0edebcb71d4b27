"""MLflow: the store, batched logging, and the whole life of one run."""
