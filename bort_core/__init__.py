"""Framework-neutral core of bort: configs, parameter arithmetic, checkpoint I/O, data, CLI.

Imports neither MXNet nor PyTorch.
"""
__version__ = "0.1.0"
