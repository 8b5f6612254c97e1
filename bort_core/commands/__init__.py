"""Small CLI commands that belong to no bigger module."""
