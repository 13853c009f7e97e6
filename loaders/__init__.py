"""Data backends, augmentation recipes and dataset readers (installed as fastssl.loaders)."""
