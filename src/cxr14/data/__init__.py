"""Data: sources (phantom, NIH), metadata validation, patient split, cache, loader, augmentation."""
