"""Sweeps: the jobs, the owner of a sweep, its report."""
