"""The run config: pydantic schema, one-line errors, Hydra override checks."""
