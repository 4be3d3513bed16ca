"""Training: the engine (epochs, validation, early stopping, checkpoints, resume)."""
