"""Reporting: the side-by-side comparison of every evaluated model."""
