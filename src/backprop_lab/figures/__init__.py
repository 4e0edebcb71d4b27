"""Figures (matplotlib, no pyplot state): plain reference figures and the fast per-run renderer."""
