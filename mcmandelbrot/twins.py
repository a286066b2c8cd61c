"""
Choosing between a compiled kernel and its numpy twin, as asynqueue's
core does: the compiled one unless ``ASYNQUEUE_PUREPYTHON`` is set (to
anything but ``""`` or ``"0"``) or it was not built.
"""
import importlib
import os

__all__ = ["choose"]


def choose(compiledName, pureName):
    """``(module, compiled)``: the live twin of two modules of this
    package, and whether it is the compiled one."""
    compiledWanted = os.environ.get("ASYNQUEUE_PUREPYTHON", "") in ("", "0")
    if compiledWanted:
        try:
            return importlib.import_module(__package__ + compiledName), True
        except ImportError:
            pass
    return importlib.import_module(__package__ + pureName), False
