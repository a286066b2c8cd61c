"""
Functions the Dask worker tests run on the cluster. They live in an
importable module (each Dask worker imports it when it unpickles a call)
and import neither Twisted nor the test modules.
"""
import os
import time

#: State kept for the life of one Dask worker process (see setState).
_state = {}


def inc(x):
    return x + 1


def pid():
    return os.getpid()


def fail(text):
    raise ValueError(text)


def count(n):
    return (x for x in range(n))


def emptyIterator():
    return iter(())


def total(array, extra=None):
    """The sum of an array (plus an optional second one)."""
    value = float(array.sum())
    if extra is not None:
        value += float(extra.sum())
    return value


def doubled(array):
    return array * 2


def ranFor(seconds, label=None):
    """Sleep; return ``(label, pid, start, end)``."""
    start = time.time()
    time.sleep(seconds)
    return label, os.getpid(), start, time.time()


def sleepUnless(seconds, localPID):
    """Sleep unless in process ``localPID``; return the process ID (so a
    test can tell a call run on the cluster from its retry run locally)."""
    if os.getpid() != localPID:
        time.sleep(seconds)
    return os.getpid()


def setState(value):
    """Keep ``value`` in this process; return the process ID."""
    _state["value"] = value
    return os.getpid()


def getState():
    return _state.get("value")


def busyThreads(dask_worker):
    """How many calls this Dask worker is running now (``Client.run``)."""
    return len(dask_worker.state.executing)


def heldIterators():
    """How many iterators this Dask worker process holds for DaskWorkers."""
    from asynqueue import daskside
    return len(daskside._held)


def schedulerKeys(dask_scheduler):
    """The keys the scheduler knows (``Client.run_on_scheduler``)."""
    return [str(key) for key in dask_scheduler.tasks]


def pluginNames(dask_scheduler):
    """The names of the worker plugins registered with the scheduler."""
    return list(dask_scheduler.worker_plugins)
