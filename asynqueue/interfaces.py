"""
The worker-author contract: ``IWorker``, which TaskQueue talks to for every
kind of worker, with the invariant that its qualification lists are lists.

See SPEC Part B §3.6 for the obligations beyond the method signatures.
"""
from zope.interface import Attribute, Interface, invariant

from .errors import InvariantError

__all__ = ["IWorker", "NOT_READY"]

#: What a worker's optional ``runOrWait`` returns when it cannot take
#: another task yet (see ``IWorker.run``).
NOT_READY = object()


def _check_qualifications(ob):
    """Raise InvariantError unless both qualification lists are lists."""
    for name in ("cQualified", "iQualified"):
        if not isinstance(getattr(ob, name, None), list):
            raise InvariantError(ob)


class IWorker(Interface):
    """
    Provided by worker objects that can take tasks from a TaskQueue.

    A worker qualifies for series ``None`` and for every series listed in
    ``cQualified`` (class-wide) and ``iQualified`` (this instance). The
    TaskHandler writes ``ID``, ``hired`` and ``assignments`` onto it.
    """

    cQualified = Attribute(
        "A list of series that every worker of this class qualifies for.")
    iQualified = Attribute(
        "A list of series that this worker instance qualifies for.")

    invariant(_check_qualifications)

    def setResignator(callableObject):
        """Store a callable to call (with no arguments) if the worker has to
        quit on its own, for example after losing its connection."""

    def run(task):
        """Start running ``task`` and return a Deferred that fires when the
        worker can take another task.

        The worker must eventually call ``task.callback((status, result))``
        with one of the one-byte status codes. It must pop ``consumer``,
        ``raw`` and ``doNext`` from the task's keywords before calling the
        user's function, and treat ``task.priority <= -20`` as doNext.

        A worker may also offer ``runOrWait(task, whenReady, arg)``, which
        the queue then uses instead: the same, but it returns None if it
        can take another task at once, else NOT_READY, and calls
        ``whenReady(arg)`` once it can (no Deferred per task)."""

    def stop():
        """Return a Deferred that fires once every pending task's result has
        been delivered. Safe to call before the reactor stops."""

    def crash():
        """Stop at once and return the list of unfinished tasks."""
