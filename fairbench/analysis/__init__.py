"""Diagnostics of finished runs (``fairbench analyze ...``)."""
