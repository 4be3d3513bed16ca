"""Evaluation: multi-label metrics, validation-tuned thresholds, inference."""
