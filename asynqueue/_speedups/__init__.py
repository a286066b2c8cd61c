"""
The compiled core of asynqueue, with a pure-Python twin of each module.

The compiled modules run unless ``ASYNQUEUE_PUREPYTHON`` is set (to anything
but ``""`` or ``"0"``) or they were not built; ``COMPILED`` tells which
path is live. Both paths behave identically; the tests run both.
"""
import os

__all__ = ["COMPILED", "framing", "scheduler"]


def _purePythonWanted():
    """True when the environment asks for the pure-Python twins."""
    return os.environ.get("ASYNQUEUE_PUREPYTHON", "") not in ("", "0")


if _purePythonWanted():
    from .pure import framing, scheduler
    COMPILED = False
else:
    try:
        from . import framing, scheduler
    except ImportError:
        from .pure import framing, scheduler
        COMPILED = False
    else:
        COMPILED = True
