"""
What remote workers share: they keep up to a number of calls in flight
somewhere else (a WireServer, a Dask cluster) and hold the calls the queue
hands them beyond that, doNext ones first, so that the queue's priority
order decides what goes next while the far side never waits for work.
"""
from collections import deque

from twisted.internet import defer
from twisted.python.failure import Failure

from .workers import popWorkerOptions

__all__ = ["Call", "SlotsWorker", "relayTo"]


class Call:
    """A task on its way to the far side, with its worker options."""

    __slots__ = ("task", "raw", "consumer", "abandoned")

    def __init__(self, task, raw, consumer):
        self.task = task
        self.raw = raw
        self.consumer = consumer
        self.abandoned = False


class SlotsWorker:
    """
    The slot keeping of such a worker. Subclasses set ``_state``
    (``"connecting"`` and ``"ready"`` take calls; ``"failed"`` and
    ``"lost"`` resign), define ``slots`` (calls in flight at most) and
    ``_pump()`` (send waiting calls while slots are free), and may hold
    their calls in a subclass of Call (``callType``).
    """

    callType = Call

    def _initSlots(self):
        self.tasks = []
        self._inFlight = []
        self._waiting = deque()
        self._readyWaiters = deque()
        self._resignator = None

    def setResignator(self, callableObject):
        self._resignator = callableObject
        if self._state in ("failed", "lost"):
            self._resign()

    def _resign(self):
        """Leave the queue (once)."""
        resignator, self._resignator = self._resignator, None
        if resignator is not None:
            resignator()

    def _admit(self, task):
        """Take ``task``; D→None when I can take another."""
        raw, consumer, vip = popWorkerOptions(task, self.raw)
        call = self.callType(task, raw, consumer)
        self.tasks.append(task)
        if vip:
            self._waiting.appendleft(call)
        else:
            self._waiting.append(call)
        self._pump()
        if self._held() < self.slots or \
                self._state not in ("connecting", "ready"):
            return defer.succeed(None)
        d = defer.Deferred()
        self._readyWaiters.append(d)
        return d

    def _held(self):
        """Calls taken and not finished."""
        return len(self._inFlight) + len(self._waiting)

    def _settle(self, call):
        """Forget a finished ``call``; True unless it was abandoned (its
        outcome is then the caller's to report)."""
        if call in self._inFlight:
            self._inFlight.remove(call)
        if call.task in self.tasks:
            self.tasks.remove(call.task)
        if call.abandoned:
            return False
        call.abandoned = True
        return True

    def _wakeReady(self, everyone=False):
        """Tell the queue I can take more (``everyone``: whatever the
        slots, as when I stop taking calls)."""
        while self._readyWaiters and (everyone or self._held() < self.slots):
            self._readyWaiters.popleft().callback(None)

    def _abandonCall(self, task):
        """Give up on the call of ``task`` (timed out or cancelled): mark
        it abandoned, forget the task and withdraw the call if it still
        waits here. ``(call, wasWaiting)``, or ``(None, False)`` if I have
        no live call of ``task``."""
        for call in list(self._waiting) + self._inFlight:
            if call.task is task and not call.abandoned:
                call.abandoned = True
                if task in self.tasks:
                    self.tasks.remove(task)
                waiting = call in self._waiting
                if waiting:
                    self._waiting.remove(call)
                return call, waiting
        return None, False

    def _abandonAll(self):
        """Abandon every call; the unfinished tasks."""
        unfinished = list(self.tasks)
        for call in self._inFlight + list(self._waiting):
            call.abandoned = True
        self._inFlight, self._waiting, self.tasks = [], deque(), []
        return unfinished


def relayTo(result, d):
    """Fire ``d`` with ``result`` (failures too) and pass it on."""
    if isinstance(result, Failure):
        d.errback(result)
        return None
    d.callback(result)
    return result
