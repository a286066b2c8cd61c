"""
The exceptions asynqueue raises, with the names and bases of AsynQueue 0.9.

Callers catch these by class; the messages say what went wrong and, where it
helps, what to do about it.
"""
from zope.interface import Invalid

__all__ = [
    "QueueRunError", "ImplementationError", "NotReadyError", "InvariantError",
    "TimeoutError", "WorkerError", "ThreadError",
]


class QueueRunError(Exception):
    """A call was made on a queue that is not running, or the queue's heap
    was shut down while getters were waiting."""


class ImplementationError(Exception):
    """An object does not provide the interface it must (IWorker,
    IConsumer)."""


class NotReadyError(ImplementationError):
    """A Deferator was advanced before the Deferred of its last item
    fired."""


class InvariantError(Invalid):
    """A worker's ``cQualified`` or ``iQualified`` is missing or not a
    list."""

    def __repr__(self):
        return "InvariantError({})".format(
            ", ".join(repr(x) for x in self.args))

    __str__ = __repr__


class TimeoutError(Exception):
    """A task timed out twice and was given up, or iteration in a worker
    process stopped answering."""


class WorkerError(Exception):
    """A task failed in a worker (its text is the remote error and
    traceback), or a worker reported an unknown status."""


class ThreadError(Exception):
    """A call made through ``ThreadLooper.deferToThread`` raised."""
