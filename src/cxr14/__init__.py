"""cxr14: train and compare architectures on NIH ChestX-ray14 (or its phantom), with DVC + MLflow."""

__version__ = "0.1.0"
