"""Bort on PyTorch: the twin of bort_gluon (same configs, names, checkpoints, CLI)."""
