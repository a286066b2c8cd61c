"""
The compiled core of asynqueue, with a pure-Python twin of each module.

The compiled modules run unless ``ASYNQUEUE_PUREPYTHON`` is set (to anything
but ``""`` or ``"0"``) or they were not built; ``COMPILED`` tells which
path is live. Both paths behave identically; the tests run both.
"""
import importlib
import os

__all__ = ["COMPILED", "framing", "scheduler", "compiledTwin",
           "numpyAllocator"]


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


def numpyAllocator():
    """
    The compiled numpy memory handler (``allocator``), or None on the
    pure-Python path, which has no twin of it: there, results are copied
    into the reply arena instead of born in it. Importing it imports
    numpy, so a child asks only once numpy is loaded.
    """
    if not COMPILED:
        return None
    try:
        from . import allocator
    except ImportError:
        return None
    return allocator


def compiledTwin(name):
    """
    The compiled module ``name`` (``"scheduler"``, ``"framing"``), or None
    if it was not built, whichever path is live; for the tests and
    benchmarks that compare the twins. The live selection is left as is.
    """
    selected = globals()[name]
    try:
        return importlib.import_module(__name__ + "." + name)
    except ImportError:
        return None
    finally:
        globals()[name] = selected
