"""Stages: what one `pipeline/<stage>.py` script does, between its argument parsing and the libraries.

A stage module opens the cache, loads a checkpoint, calls the pure library code (`data`, `models`,
`inference`, `evaluation`, `training`, `reporting`), writes the outputs and logs them to MLflow.
Nothing below this layer imports it (tests/test_layers.py).
"""
