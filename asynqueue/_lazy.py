"""
Lazy re-exports: a package module names things that live in worker modules
(threads, process, shm) without importing those until first use, and lists
in ``__all__`` only what this installation has.
"""
from importlib import import_module
from importlib.util import find_spec

__all__ = ["lazyExports"]


def lazyExports(namespace, names):
    """
    Set up lazy exports in the module whose globals are ``namespace``:
    ``names`` maps each exported name to its submodule of asynqueue.
    Returns the names whose modules exist (for ``__all__``) and installs a
    module ``__getattr__`` that imports a name on first access.
    """
    moduleName = namespace["__name__"]
    package = moduleName.split(".")[0]

    def __getattr__(name):
        module = names.get(name)
        if module is None:
            raise AttributeError(
                "module {!r} has no attribute {!r}".format(moduleName, name))
        value = getattr(import_module("{}.{}".format(package, module)), name)
        namespace[name] = value
        return value

    namespace["__getattr__"] = __getattr__
    return [name for name, module in names.items()
            if find_spec("{}.{}".format(package, module)) is not None]
