"""
asynqueue: asynchronous task queueing for Twisted, with threaded, multicore
and remote workers and deferred iteration, on a compiled core.

``TaskQueue`` is the main API; ``ThreadQueue`` and ``ProcessQueue`` are
TaskQueues with their workers already attached.
"""
from ._lazy import lazyExports
from .base import TaskQueue
from .info import Info, showResult
from .util import DeferredLock, DeferredTracker
from .workers import AsyncWorker

__version__ = "1.0.0.dev0"

#: Names imported on first use from the worker modules, so that importing
#: asynqueue does not load what a program never uses.
__all__ = [
    "AsyncWorker", "TaskQueue", "showResult", "Info", "DeferredTracker",
    "DeferredLock",
] + lazyExports(globals(), {
    "ThreadQueue": "threads",
    "ThreadWorker": "threads",
    "Consumerator": "threads",
    "OrderedItemProducer": "threads",
    "ProcessQueue": "process",
    "ProcessWorker": "process",
    "SharedArray": "shm",
})
