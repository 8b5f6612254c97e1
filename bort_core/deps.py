"""Optional dependencies: import one on demand, or fail with a line saying how to install it."""
from __future__ import annotations

import importlib


class MissingDependency(ImportError):
    """An optional package a command needs is not installed (the message says how to install)."""


def require(module: str, extra: str, what: str):
    """Import `module`, or a MissingDependency saying that `what` needs it and which extra
    installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependency("%s needs %s (%s); install it with: pip install -e '.[%s]'"
                                % (what, module, err, extra)) from None
