"""backprop-lab: a NumPy MLP with a hand-written backward pass, and the sweeps that study it."""

__version__ = "0.1.0"
