"""
The pipeline behind every render: bands of an image are handed out while
one of a bounded number of slots is free, and their results are written
strictly in band order, each slot being reused once its band is written.
So memory is bounded for any image height, whatever order the workers
finish in.
"""
from twisted.internet import defer
from twisted.python.failure import Failure

__all__ = ["Pipeline"]


class Pipeline:
    """
    Runs bands ``0 .. nBands-1`` with ``nSlots`` slots: ``start(k, slot)``
    starts band ``k`` in slot number ``slot`` and returns a Deferred of its
    result; ``write(k, result, slot)`` consumes that result, in order of
    ``k``. ``run()`` fires with the number of bands written once all are,
    or once ``cancel()`` was called (or a band or a write failed: then it
    fails) and nothing is in flight any more.
    """

    def __init__(self, nBands, nSlots, start, write):
        if nBands < 0 or nSlots < 1:
            raise ValueError("need nBands >= 0 and nSlots >= 1, not {}, "
                             "{}".format(nBands, nSlots))
        self.nBands, self.start, self.write = nBands, start, write
        self.freeSlots = list(range(min(nSlots, max(nBands, 1))))[::-1]
        self.nextBand = self.written = self.inFlight = 0
        self.arrived = {}
        self.failure = None
        self.cancelled = False
        self.d = defer.Deferred()
        self._stopWaiters = []

    def run(self):
        """Start; D→the number of bands written."""
        self._dispatch()
        self._checkDone()
        return self.d

    def cancel(self):
        """Start no more bands; D→None once none is in flight."""
        if self.d.called:
            return defer.succeed(None)
        self.cancelled = True
        d = defer.Deferred()
        self._stopWaiters.append(d)
        self._checkDone()
        return d

    @property
    def stopping(self):
        """Whether no more bands will be started."""
        return self.cancelled or self.failure is not None

    def _dispatch(self):
        """Start bands while a slot is free."""
        while self.freeSlots and self.nextBand < self.nBands \
                and not self.stopping:
            k, slot = self.nextBand, self.freeSlots.pop()
            self.nextBand += 1
            self.inFlight += 1
            d = defer.maybeDeferred(self.start, k, slot)
            d.addCallbacks(self._arrived, self._failed, (k, slot))

    def _arrived(self, result, k, slot):
        """A band is back: write what is now in order, start more."""
        self.inFlight -= 1
        self.arrived[k] = (result, slot)
        if not self.stopping:
            self._writeInOrder()
        self._dispatch()
        self._checkDone()

    def _failed(self, failure, k, slot):
        """A band failed: the run fails once nothing is in flight."""
        self.inFlight -= 1
        self.freeSlots.append(slot)
        if self.failure is None:
            self.failure = failure
        self._checkDone()

    def _writeInOrder(self):
        """Write every band that the last written one held back."""
        while self.written in self.arrived and self.failure is None:
            result, slot = self.arrived.pop(self.written)
            try:
                self.write(self.written, result, slot)
            except Exception:
                self.failure = Failure()
            self.written += 1
            self.freeSlots.append(slot)

    def _checkDone(self):
        """Fire once all is written, or stopped with nothing in flight."""
        if self.d.called or self.inFlight:
            return
        if not (self.written == self.nBands or self.stopping):
            return
        self.arrived.clear()
        if self.failure is not None:
            self.d.errback(self.failure)
        else:
            self.d.callback(self.written)
        while self._stopWaiters:
            self._stopWaiters.pop().callback(None)
