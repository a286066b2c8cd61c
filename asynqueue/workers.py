"""
Workers that run tasks for a TaskQueue. ``AsyncWorker`` lives here and runs
calls in the reactor thread; ``ThreadWorker`` and ``ProcessWorker`` are
re-exported from their own modules, as in AsynQueue 0.9.
"""
from twisted.internet import defer
from zope.interface import implementer

from ._lazy import lazyExports
from .info import Info
from .interfaces import IWorker
from .iteration import Deferator, IterationProducer, isIterator
from .util import DeferredLock

__all__ = ["AsyncWorker"] + lazyExports(globals(), {
    "ThreadWorker": "threads",
    "ProcessWorker": "process",
})


def popWorkerOptions(task, defaultRaw):
    """
    Take the worker keywords out of a task's call: returns ``(raw,
    consumer, vip)``, where ``vip`` is true for a doNext task (priority
    -20 or lower).
    """
    kw = task.callTuple[2]
    if not kw:
        return defaultRaw, None, task.priority <= -20
    raw = kw.pop("raw", None)
    consumer = kw.pop("consumer", None)
    vip = kw.pop("doNext", False) or task.priority <= -20
    return defaultRaw if raw is None else raw, consumer, vip


def iterationResult(result, consumer):
    """
    The ``(status, result)`` of an iterator result: a Deferator (``[]``
    if it cannot be made; a Deferator result is used as it is), wrapped in
    an IterationProducer when a consumer was given.
    """
    try:
        dr = result if isinstance(result, Deferator) else Deferator(result)
    except Exception:
        return b'i', []
    if consumer is not None:
        return b'i', IterationProducer(dr, consumer)
    return b'i', dr


@implementer(IWorker)
class AsyncWorker:
    """
    Runs each task in the reactor thread, one at a time: a function that
    returns a Deferred keeps the worker busy until it fires. Useful for
    ordering and prioritising asynchronous work.
    """

    cQualified = ["async", "local"]

    def __init__(self, series=[], raw=False):
        self.iQualified = list(series)
        self.raw = raw
        self.info = Info()
        self.dLock = DeferredLock()
        self.tasks = []

    def setResignator(self, callableObject):
        self.dLock.addStopper(callableObject)

    def run(self, task):
        """Run ``task`` once the worker is free; fires when it is done."""
        raw, consumer, vip = popWorkerOptions(task, self.raw)
        self.tasks.append(task)
        d = self.dLock.acquire(vip)
        d.addCallback(lambda _: self._call(task, raw, consumer))
        return d

    def _call(self, task, raw, consumer):
        """Make the call with the lock held; deliver its outcome."""
        f, args, kw = task.callTuple
        d = defer.maybeDeferred(f, *args, **kw)
        d.addCallbacks(
            self._succeeded, self._failed,
            callbackArgs=(raw, consumer), errbackArgs=(task,))
        d.addCallback(self._deliver, task)
        return d

    @staticmethod
    def _succeeded(result, raw, consumer):
        if not raw and isIterator(result):
            return iterationResult(result, consumer)
        return b'r', result

    def _failed(self, failure, task):
        f, args, kw = task.callTuple
        return b'e', self.info.setCall(f, args, kw).aboutFailure(failure)

    def _deliver(self, statusResult, task):
        """Release the lock, then hand the outcome to the task."""
        self.dLock.release()
        if task in self.tasks:
            self.tasks.remove(task)
        task.callback(statusResult)

    def stop(self):
        """Fires once the tasks handed to this worker are done."""
        return self.dLock.stop()

    def crash(self):
        """Return the unfinished tasks (running or waiting for the lock)."""
        return list(self.tasks)
