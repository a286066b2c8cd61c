"""
asynqueue: asynchronous task queueing for Twisted, with threaded, multicore
and remote workers and deferred iteration, on a compiled core.

``TaskQueue`` is the main API; ``ThreadQueue`` and ``ProcessQueue`` are
TaskQueues with their workers already attached. Every name here is imported
on first use, so that a worker process can import parts of the package
without loading Twisted.
"""
from ._lazy import lazyExports

__version__ = "1.0.0.dev0"

__all__ = lazyExports(globals(), {
    "TaskQueue": "base",
    "AsyncWorker": "workers",
    "showResult": "info",
    "Info": "info",
    "DeferredTracker": "util",
    "DeferredLock": "util",
    "ThreadQueue": "threads",
    "ThreadWorker": "threads",
    "Consumerator": "threads",
    "OrderedItemProducer": "threads",
    "ProcessQueue": "process",
    "ProcessWorker": "process",
    "SharedArray": "shm",
    "WireWorker": "wire",
    "WireServer": "wire",
    "ServerManager": "wire",
    "DaskWorker": "dask",
})
