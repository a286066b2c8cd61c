"""
``NullQueue``: a TaskQueue with one AsyncWorker, for running calls in the
reactor thread with the queue's ordering, priorities and error policy.
"""
from .base import TaskQueue
from .workers import AsyncWorker

__all__ = ["NullQueue"]


class NullQueue(TaskQueue):
    """A TaskQueue with a single AsyncWorker attached; keywords go to
    TaskQueue."""

    def __init__(self, **kw):
        TaskQueue.__init__(self, **kw)
        self.attachWorker(AsyncWorker())
